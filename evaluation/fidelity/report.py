"""The fidelity report: responses, sessions, ground truth, policy ranking, sim-to-real.

`run_validation(ValidateConfig(...))` returns one JSON-ready dict (see `REQUIRED_KEYS`);
`evaluation.fidelity.render.write_report` turns it into Markdown with plots. The inputs (the
simulator, the world, the held-out logs and where they come from) are gathered by
`evaluation.fidelity.inputs.setup_run`; each section below reads that run, and `run_validation`
runs them in order and assembles the document.

The ground-truth section (KL, oracle AUC, policy ranking, sim-to-real) needs a world: the
logs' world, the checkpoint's training world, `default`, or a WorldConfig JSON file.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from evaluation.distributed import RayConfig
from evaluation.fidelity.comparison import baseline_section
from evaluation.fidelity.config import (
    DEFAULT_HELDOUT_SEED,
    KL_FLOOR_NOTE,
    REAL_LOG_TARGETS,
    REQUIRED_KEYS,
    TARGETS,
    ValidateConfig,
)
from evaluation.fidelity.effects import profile_effect, text_effect
from evaluation.fidelity.events import (
    Events,
    context_spans,
    teacher_forced,
    world_replay,
)
from evaluation.fidelity.inputs import ValidationRun, setup_run
from evaluation.fidelity.privacy import privacy_section
from evaluation.fidelity.sections import (
    ground_truth_metrics,
    leave_metrics,
    ranking_metrics,
    response_metrics,
    session_metrics,
)

# the settings and keys stay importable from here, where the CLI and callers have taken them
__all__ = ["DEFAULT_HELDOUT_SEED", "REQUIRED_KEYS", "ValidateConfig", "run_validation"]

GREEDY_NOTE = (
    "greedy ranks candidates by expected one-step reward under the env's own response model: "
    "the true probabilities in the world (oracle-greedy), the simulator's own "
    "(its score_slates, all candidates in one forward) in the simulator"
)


def _sessions(run: ValidationRun) -> dict[str, Any]:
    """Free-running sessions of the simulator vs the logged ones."""
    from evaluation.fidelity.rollouts import (
        generate_seeds,
        rollout_logging_policy,
        rollout_replay,
    )
    from recsim_env.log_generation import item_popularity, needs_appeal, user_appeal

    t0 = time.perf_counter()
    cfg, sim, world, events, data = run.cfg, run.sim, run.world, run.events, run.data
    if data.policy is not None and world is not None:
        if data.generated:  # the logged users themselves: same seeds, candidates, uniforms
            wprof, seeds = generate_seeds(world, cfg.users, data.seed)
            uids = [f"u{data.seed}_{i}" for i in range(cfg.users)]
            profiles = sim.profile_encoder.encode(world.users_table(uids, wprof))
        else:
            profiles = events.profiles
            rng = np.random.default_rng(cfg.seed)
            seeds = [int(s) for s in rng.integers(0, 2**63, len(profiles))]
            wprof = None
            if needs_appeal(data.policy):
                if sim.profile_encoder.vocab != world.profile_encoder.vocab:
                    raise ValueError(
                        f"logging policy {data.policy!r} ranks by the world's view of each user, "
                        "but the simulator's profile vocabulary differs from the world's"
                    )
                wprof = profiles
        appeal = None
        if needs_appeal(data.policy):
            assert wprof is not None  # set above whenever the policy ranks by appeal
            appeal = user_appeal(world, wprof)
        rollouts = rollout_logging_policy(
            sim,
            run.env_cfg,
            profiles,
            seeds,
            data.policy,
            item_popularity(world),
            cfg.pool,
            cfg.progress,
            appeal,
        )
        how = f"logging policy '{data.policy}'" + (
            " with the logged users' seeds (same candidates and uniforms)" if data.generated else ""
        )
        max_steps = run.env_cfg.max_episode_steps
    else:
        slates: list[list[np.ndarray]] = [[] for _ in events.session_length]
        for s, first, k in zip(events.step_session, events.step_first_slot, events.step_size):
            slates[s].append(events.item[first : first + k])
        max_steps = int(events.session_length.max())
        rollouts = rollout_replay(
            sim, slates, events.profiles, cfg.seed, max_steps, cfg.pool, cfg.progress
        )
        how = (
            "the logged slates replayed in order (then slates of other held-out sessions): "
            "the logging policy is unknown"
        )
    sessions = session_metrics(events, rollouts, max_steps)
    sessions["simulated_with"] = how
    run.lap("sessions", t0)
    return sessions


def _ground_truth(run: ValidationRun) -> dict[str, Any]:
    """KL to the truth, and the floor of the simulator's context window."""
    t0 = time.perf_counter()
    events = run.events
    spans = context_spans(run.sim, run.heldout, events)
    beyond = np.zeros(len(events), dtype=bool)
    ctx_probs = run.true_probs
    if (spans[:, 1] > 0).any():
        ctx_probs, _ = world_replay(run.world, run.heldout, events, spans)
        for s, _start, first, end in spans[spans[:, 1] > 0]:
            beyond |= (events.session == s) & (events.step >= first) & (events.step < end)
    sim_probs, true_probs = run.sim_probs, run.true_probs
    sim_leave, true_leave = run.sim_leave, run.true_leave
    # teacher-forced and replayed in the world before the sections
    assert sim_probs is not None and true_probs is not None
    assert sim_leave is not None and true_leave is not None
    gt = ground_truth_metrics(
        events, sim_probs, true_probs, sim_leave, true_leave, ctx_probs, beyond
    )
    gt["note"] = KL_FLOOR_NOTE
    run.lap("ground_truth", t0)
    return gt


def _ranking(
    run: ValidationRun, train_events: Events | None, ray: RayConfig | None = None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Policy returns in the simulator and the world, and (with sim2real) the PPO pair."""
    from evaluation.fidelity.ranking import rank_policies, train_ppo

    t0 = time.perf_counter()
    cfg, sim, world = run.cfg, run.sim, run.world
    counts = None
    if train_events is not None:  # `popular` ranks by the training part's clicks, on both sides
        counts = np.bincount(
            train_events.item, weights=train_events.clicked.astype(float), minlength=sim.num_items
        )
    env_kwargs = run.env_cfg.to_dict()
    policies: dict[str, Any] = {p: p for p in cfg.policies} if cfg.ranking else {}
    if cfg.ppo:
        policies["ppo"] = cfg.ppo
    train_seconds = {"ppo_sim": 0.0, "ppo_true": 0.0}
    more_pairs: dict[str, Any] = {}  # the pairs of seeds after the first: world returns only
    if cfg.sim2real:
        for i in range(cfg.ppo_seeds):
            for label, env_id, extra in (
                ("ppo_sim", "LLMUserSim-v0", {"simulator": run.sim_path, "device": cfg.device}),
                ("ppo_true", "ParametricUserSim-v0", {"world": world.config}),
            ):
                t1 = time.perf_counter()
                model = train_ppo(
                    env_id, {**env_kwargs, **extra}, cfg.ppo_steps, cfg.seed + i, cfg.ppo_envs
                )
                (policies if i == 0 else more_pairs)[label if i == 0 else f"{label}_{i}"] = model
                train_seconds[label] = round(train_seconds[label] + time.perf_counter() - t1, 1)

    def evaluate(labelled: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return rank_policies(
            labelled,
            sim,
            world,
            env_kwargs,
            cfg.policy_users,
            cfg.seed,
            cfg.policy_envs,
            counts,
            cfg.progress,
            trust_sb3_zip=cfg.trust_sb3_zip,
            ray=ray,
            sim_path=run.sim_path,
            device=cfg.device,
        )

    returns = evaluate(policies)
    extra_returns = evaluate(more_pairs) if more_pairs else {}
    ranking = ranking_metrics(returns)
    ranking["greedy_note"] = GREEDY_NOTE
    ranking["users"] = min(len(r["true"]) for r in returns.values()) if returns else 0
    sim2real = None
    if cfg.sim2real and {"ppo_sim", "ppo_true"} <= set(returns):
        both = {**returns, **extra_returns}
        pairs = []
        for i in range(cfg.ppo_seeds):
            sim_label, true_label = (
                ("ppo_sim", "ppo_true") if i == 0 else (f"ppo_sim_{i}", f"ppo_true_{i}")
            )
            if {sim_label, true_label} <= set(both):
                a_i = float(np.mean(both[sim_label]["true"]))
                b_i = float(np.mean(both[true_label]["true"]))
                pairs.append(
                    {
                        "seed": cfg.seed + i,
                        "ppo_sim_true_return": a_i,
                        "ppo_true_true_return": b_i,
                        "ratio": a_i / b_i if b_i else None,
                    }
                )
        a = float(np.mean([p["ppo_sim_true_return"] for p in pairs]))
        b = float(np.mean([p["ppo_true_true_return"] for p in pairs]))
        sim2real = {
            "ppo_sim_true_return": a,
            "ppo_true_true_return": b,
            "sim2real_ratio": a / b if b else None,
            "per_seed": pairs,
            "ppo_steps": cfg.ppo_steps,
            "ppo_envs": cfg.ppo_envs,
            "ppo_seeds": len(pairs),
            "train_seconds": {"sim": train_seconds["ppo_sim"], "true": train_seconds["ppo_true"]},
            "random_true_return": (
                float(np.mean(returns["random"]["true"])) if "random" in returns else None
            ),
        }
    run.lap("ranking", t0)
    return ranking, sim2real


def run_validation(cfg: ValidateConfig, ray: RayConfig | None = None) -> dict[str, Any]:
    """Run every section the inputs allow and return the report as a JSON-ready dict.

    Args:
        cfg: the settings.
        ray: play the policy ranking's users on Ray actors (`evaluation.fidelity.ranking_ray`):
            the same figures; the other sections run in this process.

    Raises:
        DistributedError: (with `ray`) the cluster cannot do the work (checked first, before
            the sections that run here: an unreachable cluster or a missing GPU fails at once).
    """
    if ray is not None and (cfg.ranking or cfg.sim2real):
        from evaluation.distributed import ActorPool, ray_runtime

        with ray_runtime(ray):
            ActorPool(ray, cfg.device)  # checks the cluster has the devices; starts nothing
            return _run_validation(cfg, ray)
    return _run_validation(cfg, None)


def _run_validation(cfg: ValidateConfig, ray: RayConfig | None) -> dict[str, Any]:
    t_all = time.perf_counter()
    run = setup_run(cfg)
    t0 = time.perf_counter()
    run.sim_probs, run.sim_leave = teacher_forced(
        run.sim, run.heldout, run.events, progress=cfg.progress
    )
    if run.world is not None:
        run.true_probs, run.true_leave = world_replay(run.world, run.heldout, run.events)
    responses = response_metrics(
        run.events, run.sim_probs, run.true_probs, cfg.seed, run.sim.behaviours
    )
    leave = leave_metrics(run.events, run.sim_leave, run.true_leave)
    run.lap("responses", t0)
    baselines, warm_cold, train_events = baseline_section(run)
    privacy = privacy_section(run)
    t0 = time.perf_counter()
    profile = profile_effect(run)
    warm_cold["items"]["cold"]["text"] = text_effect(run, ~run.known[run.events.item])
    run.lap("effects", t0)
    sessions = _sessions(run)
    gt = _ground_truth(run) if run.world is not None else None
    ranking = sim2real = None
    if run.world is not None and (cfg.ranking or cfg.sim2real):
        ranking, sim2real = _ranking(run, train_events, ray)
    run.timings["total"] = round(time.perf_counter() - t_all, 2)
    res = _assemble(run, responses, leave, baselines, warm_cold, sessions, gt, ranking, sim2real)
    res["profile_effect"] = profile
    res["membership_attack_auc"] = privacy["membership_attack_auc"]
    res["privacy"] = privacy
    return res


def _assemble(
    run: ValidationRun,
    responses: dict[str, Any],
    leave: dict[str, Any],
    baselines: dict[str, Any],
    warm_cold: dict[str, Any],
    sessions: dict[str, Any],
    gt: dict[str, Any] | None,
    ranking: dict[str, Any] | None,
    sim2real: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON document: the issue's flat keys first, then every section in detail."""
    s = responses["sim"]
    o = responses.get("oracle")
    res: dict[str, Any] = {
        "click_auc": s["click_auc"],
        "oracle_click_auc": o["click_auc"] if o else None,
        "buy_auc": s["buy_auc"],
        "oracle_buy_auc": o["buy_auc"] if o else None,
        "click_logloss": s["click_logloss"],
        "oracle_click_logloss": o["click_logloss"] if o else None,
        "buy_logloss": s["buy_logloss"],
        "ece_click": s["ece_click"],
        "oracle_ece_click": o["ece_click"] if o else None,
        "kl_per_slot": gt["kl_per_slot"] if gt else None,
        "kl_leave": gt["kl_leave"] if gt else None,
        "kl_floor": 0.0 if gt else None,
        "floor_click_auc": o["click_auc"] if o else None,
        "kl_floor_note": KL_FLOOR_NOTE if gt else None,
        "kl_floor_context": gt["kl_floor_context"] if gt else None,
        "floor_context_click_auc": gt["floor_context_click_auc"] if gt else None,
        "session_length_ks": sessions["session_length_ks"],
        "kendall_tau": ranking["kendall_tau"] if ranking else None,
        "policy_returns": (
            {n: {"sim": r["sim"], "true": r["true"]} for n, r in ranking["policies"].items()}
            if ranking
            else {}
        ),
        "policy_relative_error": (
            {n: r["relative_error"] for n, r in ranking["policies"].items()} if ranking else {}
        ),
        "sim2real_ratio": sim2real["sim2real_ratio"] if sim2real else None,
        "popularity_click_auc": baselines["popularity_click_auc"],
        "logreg_click_auc": baselines["logreg_click_auc"],
        "gbdt_click_auc": baselines["gbdt_click_auc"],
        "best_baseline": baselines["best"],
        "best_baseline_click_auc": baselines["best_click_auc"],
        "cold_item_click_auc": warm_cold["items"]["cold"]["sim_click_auc"],
        "per_behaviour": s["per_behaviour"],
        "click_rate_per_position": {
            **responses["click_rate_per_position"],
            "sim_rollout": sessions["click_rate_per_position_rollout"]["sim"],
        },
        "responses": responses,
        "leave": leave,
        "baselines": baselines,
        "warm_cold": warm_cold,
        "sessions": sessions,
        "ground_truth": gt,
        "ranking": ranking,
        "sim2real": sim2real,
    }
    res["targets"] = _targets(res)
    events, data, sim = run.events, run.data, run.sim
    res["setup"] = {
        "simulator": run.sim_path,
        "simulator_training": {
            k: v
            for k, v in ((sim.extra or {}).get("training", {}) or {}).items()
            if k != "log_meta"
        },
        "logs": run.cfg.logs,
        "heldout": "fresh users generated" if data.generated else "held-out users of --logs",
        "heldout_users": len(set(events.session_user)),
        "heldout_sessions": len(events.session_length),
        "heldout_steps": len(events.step_leave),
        "heldout_events": len(events),
        "heldout_seed": data.seed if data.generated else None,
        "logging_policy": data.policy,
        "world": run.world.config.to_dict() if run.world is not None else None,
        "env": run.env_cfg.to_dict(),
        "config": run.cfg.to_dict(),
        "seconds": run.timings,
    }
    res["notes"] = run.notes
    return res


def _targets(res: dict[str, Any]) -> dict[str, Any]:
    """Each target met or not: the default's against a world, the real-log ones without."""
    gap = (
        res["oracle_click_auc"] - res["click_auc"]
        if res["oracle_click_auc"] is not None and res["click_auc"] is not None
        else None
    )
    over_best = (
        res["click_auc"] - res["best_baseline_click_auc"]
        if res["click_auc"] is not None and res["best_baseline_click_auc"] is not None
        else None
    )
    values = {
        "kl_per_slot": res["kl_per_slot"],
        "click_auc_gap": gap,
        "ece_click": res["ece_click"],
        "session_length_ks": res["session_length_ks"],
        "kendall_tau": res["kendall_tau"],
        "sim2real_ratio": res["sim2real_ratio"],
        "click_auc_minus_best_baseline": over_best,
    }
    intervals = res["baselines"].get("intervals") or {}
    out = {}
    targets = TARGETS if res["ground_truth"] is not None else REAL_LOG_TARGETS
    for key, (op, bound) in targets.items():
        v = values[key]
        met = None if v is None else (v <= bound if op == "<=" else v >= bound - 1e-12)
        ci = intervals.get(f"{key}_ci95")
        out[key] = {"value": v, "target": f"{op} {bound}", "met": met, "ci95": ci}
        # the bound inside the interval: other users of the same kind could turn the verdict
        out[key]["bound_in_ci95"] = None if ci is None else bool(ci[0] <= bound <= ci[1])
    return out
