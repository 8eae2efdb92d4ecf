"""The fidelity report: responses, sessions, ground truth, policy ranking, sim-to-real.

`run_validation(ValidateConfig(...))` returns one JSON-ready dict (see `REQUIRED_KEYS`);
`evaluation.fidelity.render.write_report` turns it into Markdown with plots.

Where the held-out events come from:

- No `logs`: fresh users of the ground-truth world (`generate(users, policy, seed)` with a seed
  the simulator's training logs did not use), logged with the training logs' policy (the
  default's: 'mixed'). Every held-out user is a cold user. The baselines are fitted on
  `baseline_users` further fresh users (seed + 1) of the same world and policy, standing in for
  the simulator's training part (its logs are not shipped with the checkpoint).
- `logs` that the checkpoint was trained on (same meta.json): the users train-sim held out for
  validation (same split) are the held-out (cold) users; the others are the training part
  (baselines; a sample of them are the warm users).
- Other `logs`: every user is held out; baselines are fitted on fresh world users when the
  logs come from a world, else skipped.

The ground-truth section (KL, oracle AUC, policy ranking, sim-to-real) needs a world: the
logs' world, the checkpoint's training world, `default`, or a WorldConfig JSON file.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.fidelity import metrics as M
from evaluation.fidelity.events import (
    Events,
    align_items,
    build_events,
    context_spans,
    select_users,
    teacher_forced,
    world_replay,
)
from evaluation.fidelity.ranking import DEFAULT_POLICIES
from evaluation.fidelity.sections import (
    click_probability,
    ground_truth_metrics,
    group_metrics,
    leave_metrics,
    ranking_metrics,
    response_metrics,
    session_metrics,
)
from simulators.logs import InteractionLogs

log = logging.getLogger(__name__)

DEFAULT_HELDOUT_SEED = 99991
REQUIRED_KEYS: tuple[str, ...] = (
    "click_auc",
    "oracle_click_auc",
    "buy_auc",
    "click_logloss",
    "ece_click",
    "kl_per_slot",
    "kl_floor",
    "floor_click_auc",
    "session_length_ks",
    "kendall_tau",
    "policy_returns",
    "sim2real_ratio",
)
TARGETS: dict[str, tuple[str, float]] = {
    "kl_per_slot": ("<=", 0.02),
    "click_auc_gap": ("<=", 0.01),
    "ece_click": ("<=", 0.01),
    "session_length_ks": ("<=", 0.05),
    "kendall_tau": (">=", 1.0),
    "sim2real_ratio": (">=", 0.9),
}
"""The issue's targets for the embedded default (click_auc_gap = oracle AUC - sim AUC)."""
KL_FLOOR_NOTE = (
    "The ground-truth world is identifiable: a user's initial interests are a deterministic "
    "function of the profile (no hidden draws), and drift and fatigue are deterministic "
    "functions of the slates shown and the responses given, all of which the simulator reads. "
    "A predictor that knows the world's equations therefore reproduces the true probabilities "
    "exactly: kl_floor = 0 and floor_click_auc = oracle_click_auc. The one limit is the "
    "context: a session longer than the simulator's context is read through its sliding window "
    "(profile + recent steps), which forgets older drift; kl_floor_context and "
    "floor_context_click_auc measure that floor (the world's equations fed only what the "
    "window shows) and events_beyond_context the share of events it concerns."
)


@dataclass(frozen=True, kw_only=True)
class ValidateConfig:
    """Settings of `llm-usersim validate`."""

    sim: str | None = None
    """Simulator checkpoint directory (None: the embedded default)."""
    logs: str | None = None
    """Log directory to validate on (None: fresh held-out users of the world)."""
    world: str = "auto"
    """'auto' (the logs' world, else the checkpoint's training world, else the default when no
    logs are given), 'default', 'none', or a JSON file of WorldConfig fields."""
    users: int = 2000
    """Held-out users (fresh users generated; or at most this many held-out log users)."""
    seed: int = DEFAULT_HELDOUT_SEED
    """Seed of the fresh held-out users (and of sampling in the metrics)."""
    policy: str | None = None
    """Logging policy of fresh users (default: the training logs' policy, else 'mixed')."""
    baseline_users: int = 10_000
    """Fresh users the baselines are fitted on (world case without training logs)."""
    warm_users: int = 500
    """Training-part users evaluated as warm users (when the logs are the training logs)."""
    ranking: bool = True
    """Run the policy ranking (needs a world)."""
    policies: tuple[str, ...] = DEFAULT_POLICIES
    """Policies ranked (agents.registry names or SB3 specs)."""
    policy_users: int = 256
    """Users per policy and env in the ranking."""
    policy_envs: int = 128
    """Rows of the ranking's vector envs."""
    ppo: str | None = None
    """A trained SB3 model ('ppo:PATH' or PATH.zip) added to the ranking."""
    sim2real: bool = False
    """Train PPO on the simulator and on the world (same budget) and compare on the world."""
    ppo_steps: int = 100_000
    """Env steps of each sim2real PPO run."""
    ppo_envs: int = 32
    """Envs of each sim2real PPO run."""
    ppo_seeds: int = 3
    """PPO pairs of sim2real, one per seed (seed, seed + 1, ...): one PPO run's return moves a
    lot with its seed, so the ratio is of the returns averaged over the pairs."""
    pool: int = 256
    """Batch rows of the simulator's free-running sessions."""
    device: str = "cpu"
    """Device of the simulator."""
    progress: bool = False
    """Progress bars and per-section log lines."""

    def __post_init__(self) -> None:
        """Validate ranges."""
        for name in ("users", "policy_users", "policy_envs", "pool", "ppo_envs", "ppo_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("baseline_users", "warm_users", "ppo_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        d = asdict(self)
        d["policies"] = list(self.policies)
        return d


# ----------------------------------------------------------------------------- setup


def _resolve_world(spec: str, logs_meta: dict | None, train_meta: dict) -> Any:
    """The ParametricUserModel named by --world (None for no ground truth)."""
    from simulators.parametric import ParametricUserModel, WorldConfig

    names = {f.name for f in fields(WorldConfig)}

    def build(d: dict) -> Any:
        return ParametricUserModel(WorldConfig(**{k: v for k, v in d.items() if k in names}))

    if spec == "none":
        return None
    if spec == "default":
        return ParametricUserModel(WorldConfig())
    if spec == "auto":
        if logs_meta is not None:
            return build(logs_meta["world"]) if isinstance(logs_meta.get("world"), dict) else None
        if isinstance(train_meta.get("world"), dict):
            return build(train_meta["world"])
        return ParametricUserModel(WorldConfig())
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"--world must be auto, default, none or a WorldConfig JSON file; got {spec!r}"
        )
    try:
        return build(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _env_config(meta: dict) -> Any:
    """The EnvConfig recorded in log metadata (defaults where absent)."""
    from recsim_env.config import EnvConfig

    names = {f.name for f in fields(EnvConfig)}
    env = meta.get("env")
    if not isinstance(env, dict):
        env = {}
    return EnvConfig(**{k: v for k, v in env.items() if k in names})


def _check_catalog(sim: Any, world: Any) -> None:
    """Raise ValueError unless the simulator's catalog and profile vocabulary are the world's."""
    sim_ids = [str(i) for i in sim.items_table()["item_id"]]
    world_ids = [str(i) for i in world.items_table()["item_id"]]
    if sim_ids != world_ids:
        raise ValueError(
            "the simulator's catalog is not the world's (different item ids or order); "
            "pass --world none or the world the simulator was trained on"
        )
    if list(sim.profile_encoder.vocab) != list(world.profile_encoder.vocab):
        raise ValueError("the simulator's profile vocabulary differs from the world's")


def _session_users(logs: InteractionLogs) -> list[str]:
    """The user of every session, in tokenisation order (what train-sim splits)."""
    from simulators.logs import sessions_in_order

    steps = sessions_in_order(logs.steps)
    first = steps.drop_duplicates(["user_id", "session_id"])
    return first["user_id"].astype(str).tolist()


@dataclass
class _Data:
    heldout: InteractionLogs
    train: InteractionLogs | None
    warm: InteractionLogs | None
    generated: bool
    policy: str | None
    seed: int
    notes: list[str]


def _prepare_logs(
    cfg: ValidateConfig, world: Any, train_meta: dict, train_cfg: dict, env_cfg: Any
) -> _Data:
    """Held-out logs, the training part (baselines) and warm users (see the module docstring)."""
    from recsim_env.log_generation import POLICIES, generate
    from simulators.logs import read_logs
    from simulators.training.data import split_by_user

    notes: list[str] = []
    train_seed = train_meta.get("seed")
    policy = cfg.policy or (
        str(train_meta["policy"]) if train_meta.get("policy") in POLICIES else "mixed"
    )

    def fresh(users: int, seed: int) -> InteractionLogs:
        return generate(users, policy, seed, env_cfg, world)

    if cfg.logs is None:
        if world is None:
            raise ValueError(
                "the simulator was not trained on a known world's catalog: pass --logs DIR "
                "(held-out logs of its catalog) or --world (the world it was trained on)"
            )
        seed = cfg.seed
        while seed == train_seed or seed + 1 == train_seed:
            seed += 2
        if seed != cfg.seed:
            notes.append(f"held-out seed moved from {cfg.seed} to {seed} (used in training)")
        heldout = fresh(cfg.users, seed)
        train = fresh(cfg.baseline_users, seed + 1) if cfg.baseline_users else None
        if train is not None:
            notes.append(
                f"baselines fitted on {cfg.baseline_users} fresh users (seed {seed + 1}, policy "
                f"{policy}) standing in for the simulator's training part"
            )
        return _Data(heldout, train, None, True, policy, seed, notes)

    logs = read_logs(cfg.logs)
    meta_equal = logs.meta == train_meta
    users_all = sorted(set(logs.steps["user_id"].astype(str)))
    rng = np.random.default_rng(cfg.seed)
    train = warm = None
    if meta_equal and train_cfg:
        session_users = _session_users(logs)
        is_val = split_by_user(
            session_users, float(train_cfg.get("val_fraction", 0.1)), int(train_cfg.get("seed", 0))
        )
        held_users = sorted({u for u, v in zip(session_users, is_val) if v})
        train_users = sorted(set(users_all) - set(held_users))
        notes.append(
            f"the logs are the simulator's training logs: the {len(held_users)} users train-sim "
            "held out for validation are the held-out (cold) users"
        )
        train = select_users(logs, set(train_users))
        if cfg.warm_users and train_users:
            pick = rng.choice(
                len(train_users), min(cfg.warm_users, len(train_users)), replace=False
            )
            warm = select_users(logs, {train_users[i] for i in pick})
    else:
        held_users = users_all
        if world is not None and cfg.baseline_users:
            train = fresh(cfg.baseline_users, cfg.seed + 1)
            notes.append(f"baselines fitted on {cfg.baseline_users} fresh world users")
        else:
            notes.append(
                "the logs are not the simulator's training logs and no world is known: "
                "no training part, the baselines are skipped"
            )
    if len(held_users) > cfg.users:
        pick = rng.choice(len(held_users), cfg.users, replace=False)
        held_users = [held_users[i] for i in sorted(pick)]
        notes.append(f"held-out users subsampled to {cfg.users}")
    log_policy = logs.meta.get("policy") if logs.meta.get("policy") in POLICIES else None
    return _Data(
        select_users(logs, set(held_users)), train, warm, False, log_policy, cfg.seed, notes
    )


# ----------------------------------------------------------------------------- sections


GREEDY_NOTE = (
    "greedy ranks candidates by expected one-step reward under the env's own response model: "
    "the true probabilities in the world (oracle-greedy), the simulator's own "
    "(GPT2UserSimulator.step(peek=True)) in the simulator"
)


@dataclass
class _Run:
    """What the sections share: inputs, held-out events and the models' probabilities."""

    cfg: ValidateConfig
    sim_path: str
    sim: Any
    world: Any
    env_cfg: Any
    data: _Data
    heldout: InteractionLogs
    events: Events
    known: np.ndarray
    notes: list[str]
    timings: dict[str, float]
    sim_probs: np.ndarray | None = None
    sim_leave: np.ndarray | None = None
    true_probs: np.ndarray | None = None
    true_leave: np.ndarray | None = None

    def lap(self, name: str, t0: float) -> None:
        """Record a section's time."""
        self.timings[name] = round(time.perf_counter() - t0, 2)
        if self.cfg.progress:
            log.warning("%s done in %.1fs", name, self.timings[name])


def _setup(cfg: ValidateConfig) -> _Run:
    """Load the simulator, resolve the world, prepare held-out (and training-part) logs."""
    from simulators.gpt2_user import DEFAULT_SIMULATOR_DIR, load_batched_simulator

    t0 = time.perf_counter()
    sim_path = cfg.sim or str(DEFAULT_SIMULATOR_DIR)
    sim = load_batched_simulator(sim_path, device=cfg.device, capacity=1)
    training = (sim.extra or {}).get("training", {}) or {}
    train_meta = training.get("log_meta", {}) or {}
    train_cfg = training.get("train_config", {}) or {}
    logs_meta = None
    if cfg.logs is not None:
        from simulators.logs import read_logs

        logs_meta = read_logs(cfg.logs, validate=False).meta
    world = _resolve_world(cfg.world, logs_meta, train_meta)
    if world is not None:
        try:
            _check_catalog(sim, world)
        except ValueError:
            if cfg.world != "auto":
                raise
            log.warning("the simulator's catalog differs from the world's: no ground truth")
            world = None
    env_cfg = _env_config(logs_meta if logs_meta is not None and "env" in logs_meta else train_meta)
    data = _prepare_logs(cfg, world, train_meta, train_cfg, env_cfg)
    heldout = align_items(data.heldout, sim.items_table())
    run = _Run(
        cfg=cfg,
        sim_path=str(sim_path),
        sim=sim,
        world=world,
        env_cfg=env_cfg,
        data=data,
        heldout=heldout,
        events=build_events(heldout, sim.profile_encoder),
        known=sim.model.item_known.detach().cpu().numpy(),
        notes=list(data.notes),
        timings={},
    )
    run.lap("setup", t0)
    return run


def _baselines(run: _Run) -> tuple[dict[str, Any], dict[str, Any], Events | None]:
    """Click baselines and the warm/cold split; returns (baselines, warm_cold, train events)."""
    from evaluation.fidelity.baselines import LogisticBaseline, fit_popularity, item_categories

    t0 = time.perf_counter()
    sim, events, known = run.sim, run.events, run.known
    assert run.sim_probs is not None  # teacher-forced before the sections
    sim_click = click_probability(run.sim_probs)
    preds: dict[str, np.ndarray | None] = {
        "sim": sim_click,
        "oracle": None if run.true_probs is None else click_probability(run.true_probs),
    }
    baselines: dict[str, Any] = {"fitted_on_events": 0}
    train_events = pop = lr = None
    if run.data.train is not None and len(run.data.train.steps):
        train_logs = align_items(run.data.train, sim.items_table())
        train_events = build_events(train_logs, sim.profile_encoder)
        pop = fit_popularity(train_events, item_categories(sim.items_table()), known)
        preds["popularity"] = pop.predict(events)
        preds["popularity_by_category"] = pop.predict_category(events)
        baselines["fitted_on_events"] = len(train_events)
        try:
            lr = LogisticBaseline(
                sim.item_features, known, len(sim.profile_encoder.vocab), seed=run.cfg.seed
            ).fit(train_events)
            preds["logreg"] = lr.predict(events)
        except ValueError as exc:
            run.notes.append(f"logistic regression skipped: {exc}")
    for name in ("popularity", "popularity_by_category", "logreg"):
        p = preds.get(name)
        baselines[f"{name}_click_auc"] = None if p is None else M.roc_auc(events.clicked, p)
        baselines[f"{name}_click_logloss"] = (
            None if p is None else M.binary_log_loss(events.clicked, p)
        )
    baselines["sim_click_auc"] = M.roc_auc(events.clicked, sim_click)
    kl = None if run.true_probs is None else M.kl_categorical(run.true_probs, run.sim_probs)
    item_warm = known[events.item]
    warm_cold: dict[str, Any] = {
        "items": {
            "warm": group_metrics(item_warm, events, preds, kl),
            "cold": group_metrics(~item_warm, events, preds, kl),
        },
        "users": {
            "cold": group_metrics(np.ones(len(events), bool), events, preds, kl),
            "warm": None,
        },
        "note": "cold items: item_known is False in the checkpoint (never in its training logs); "
        "held-out users are cold users (not in the simulator's training)",
    }
    if run.data.warm is not None and len(run.data.warm.steps):
        warm_logs = align_items(run.data.warm, sim.items_table())
        wev = build_events(warm_logs, sim.profile_encoder)
        wp, _ = teacher_forced(sim, warm_logs, wev)
        wpreds = {"sim": click_probability(wp)}
        if pop is not None:
            wpreds["popularity"] = pop.predict(wev)
            wpreds["popularity_by_category"] = pop.predict_category(wev)
        if lr is not None:
            wpreds["logreg"] = lr.predict(wev)
        warm = group_metrics(np.ones(len(wev), dtype=bool), wev, wpreds, None)
        warm_cold["users"]["warm"] = {**warm, "note": "sessions of training users (in-sample)"}
    run.lap("baselines", t0)
    return baselines, warm_cold, train_events


def _sessions(run: _Run) -> dict[str, Any]:
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


def _ground_truth(run: _Run) -> dict[str, Any]:
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
    run: _Run, train_events: Events | None
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


def run_validation(cfg: ValidateConfig) -> dict[str, Any]:
    """Run every section the inputs allow and return the report as a JSON-ready dict."""
    t_all = time.perf_counter()
    run = _setup(cfg)
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
    baselines, warm_cold, train_events = _baselines(run)
    sessions = _sessions(run)
    gt = _ground_truth(run) if run.world is not None else None
    ranking = sim2real = None
    if run.world is not None and (cfg.ranking or cfg.sim2real):
        ranking, sim2real = _ranking(run, train_events)
    run.timings["total"] = round(time.perf_counter() - t_all, 2)
    return _assemble(run, responses, leave, baselines, warm_cold, sessions, gt, ranking, sim2real)


def _assemble(
    run: _Run,
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
    gap = (
        res["oracle_click_auc"] - res["click_auc"]
        if res["oracle_click_auc"] is not None and res["click_auc"] is not None
        else None
    )
    values = {
        "kl_per_slot": res["kl_per_slot"],
        "click_auc_gap": gap,
        "ece_click": res["ece_click"],
        "session_length_ks": res["session_length_ks"],
        "kendall_tau": res["kendall_tau"],
        "sim2real_ratio": res["sim2real_ratio"],
    }
    out = {}
    for key, (op, bound) in TARGETS.items():
        v = values[key]
        met = None if v is None else (v <= bound if op == "<=" else v >= bound - 1e-12)
        out[key] = {"value": v, "target": f"{op} {bound}", "met": met}
    return out
