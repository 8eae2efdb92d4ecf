"""Fidelity report: metrics on arrays, event replay, teacher forcing, the validate CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.fidelity import metrics as M
from evaluation.fidelity.events import align_items, build_events, teacher_forced, world_replay
from evaluation.fidelity.report import REQUIRED_KEYS
from evaluation.fidelity.rollouts import generate_seeds, rollout_logging_policy
from evaluation.fidelity.sections import ground_truth_metrics, ranking_metrics, response_metrics
from recsim_env.cli import main
from recsim_env.log_generation import generate, item_popularity
from simulators.gpt2_user import GPT2UserSimulator
from simulators.parametric import ParametricUserModel
from tests.conftest import TINY_ENV, TINY_WORLD

# ----------------------------------------------------------------------------- metrics


def test_auc_basics() -> None:
    y = np.array([0, 0, 1, 1])
    assert M.roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert M.roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert M.roc_auc(y, np.full(4, 0.3)) == 0.5  # ties count one half
    assert M.roc_auc(np.ones(3), np.arange(3.0)) is None  # one class: undefined


def test_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.3
    p = np.round(rng.random(500) * 0.5 + 0.4 * y, 2)  # with ties
    assert M.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))


def test_ece_and_logloss() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(200_000)
    y = rng.random(len(p)) < p  # calibrated by construction
    assert M.expected_calibration_error(y, p) < 0.01
    assert M.expected_calibration_error(y, np.clip(p + 0.2, 0, 1)) > 0.1
    assert M.binary_log_loss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))
    rel = M.reliability(y, p, bins=15)
    assert sum(rel["count"]) == len(p) and len(rel["edges"]) == 16


def test_kl_is_zero_for_a_copy_and_positive_otherwise() -> None:
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(3), 100)
    p[:10] = [1.0, 0.0, 0.0]  # zeros are fine
    assert np.all(M.kl_categorical(p, p) == 0.0)
    assert np.all(M.kl_categorical(p, p[::-1]) >= 0.0)
    assert M.kl_categorical(p, p[::-1]).mean() > 0.1
    assert M.kl_bernoulli(np.array([0.3]), np.array([0.3]))[0] == 0.0


def test_kendall_tau_with_ci_ties() -> None:
    true = np.array([1.0, 2.0, 5.0, 10.0])
    assert M.kendall_tau_b(true, true * 2) == pytest.approx(1.0)
    assert M.kendall_tau_b(true, -true) == pytest.approx(-1.0)
    sim = np.array([2.0, 1.0, 5.0, 10.0])  # the first two swapped
    assert M.kendall_tau_b(true, sim) < 1.0
    # the swapped pair is tied on the true side (each mean inside the other's interval)
    ties = M.ci_ties(true, true - 1.5, true + 1.5)
    assert ties[0, 1] and not ties[1, 2] and not ties[0, 3]
    tau = M.kendall_tau_b(true, sim, x_ties=ties)
    from scipy.stats import kendalltau

    # the same as scipy's tau-b once the tied true values are made equal
    assert tau == pytest.approx(kendalltau([1.5, 1.5, 5.0, 10.0], sim).statistic)
    assert M.kendall_tau_b(true, sim, x_ties=np.ones((4, 4), bool)) is None
    # the report ties the pair in both rankings: a swap inside a tie costs nothing
    assert M.kendall_tau_b(true, sim, x_ties=ties, y_ties=ties) == pytest.approx(1.0)


def test_ranking_metrics_keys() -> None:
    rng = np.random.default_rng(3)
    returns = {
        n: {"sim": rng.normal(m, 1, 50), "true": rng.normal(m, 1, 50)}
        for n, m in (("a", 0.0), ("b", 5.0), ("c", 10.0))
    }
    r = ranking_metrics(returns)
    assert r["kendall_tau"] == pytest.approx(1.0)
    # swapping two policies whose true returns are tied leaves tau at 1 (strict tau drops)
    returns["d"] = {"sim": rng.normal(-1.0, 1, 50), "true": returns["a"]["true"] + 0.01}
    r = ranking_metrics(returns)
    assert ["a", "d"] in r["tied_pairs"]
    assert r["kendall_tau"] == pytest.approx(1.0) and r["kendall_tau_strict"] < 1.0
    assert set(r["policies"]["a"]) >= {"sim", "true", "sim_ci95", "true_ci95", "relative_error"}


def test_precision_recall_f1() -> None:
    out = M.precision_recall_f1(np.array([0, 1, 2, 1]), np.array([0, 1, 1, 1]), ["s", "c", "b"])
    assert out["c"]["precision"] == pytest.approx(2 / 3) and out["c"]["recall"] == 1.0
    assert out["b"]["recall"] == 0.0 and out["s"]["f1"] == 1.0


# ----------------------------------------------------------------------------- events


@pytest.fixture(scope="module")
def heldout(tiny_world: ParametricUserModel) -> tuple:
    logs = generate(150, "random", 99991, TINY_ENV, tiny_world)
    events = build_events(logs, tiny_world.profile_encoder)
    true_probs, true_leave = world_replay(tiny_world, logs, events)
    return logs, events, true_probs, true_leave


def test_events_layout(heldout: tuple) -> None:
    logs, ev, true_probs, true_leave = heldout
    assert len(ev) == sum(len(r) for r in logs.steps["responses"])
    assert len(ev.step_leave) == len(logs.steps)
    assert ev.session_length.sum() == len(logs.steps)
    assert np.allclose(true_probs.sum(axis=1), 1.0)
    # the world allows one click per slate: after it, every later slot is a sure skip
    after = ev.clicks_before > 0
    assert after.any() and np.allclose(true_probs[after, 0], 1.0)
    assert np.all((true_leave > 0) & (true_leave < 1))
    # only the last step of a cut session has no leave decision
    assert (~ev.step_has_target).sum() == (~ev.session_left).sum()


def test_copy_of_truth_scores_kl_zero_and_oracle_auc(heldout: tuple) -> None:
    _, ev, true_probs, true_leave = heldout
    gt = ground_truth_metrics(ev, true_probs.copy(), true_probs, true_leave.copy(), true_leave)
    assert gt["kl_per_slot"] == 0.0 and gt["kl_leave"] == 0.0
    res = response_metrics(ev, true_probs.copy(), true_probs, seed=0)
    assert res["sim"]["click_auc"] == res["oracle"]["click_auc"]
    assert res["oracle"]["click_auc"] > 0.75  # the truth is informative


def test_shuffled_probabilities_score_chance_auc(heldout: tuple) -> None:
    _, ev, true_probs, true_leave = heldout
    shuffled = true_probs[np.random.default_rng(0).permutation(len(true_probs))]
    res = response_metrics(ev, shuffled, true_probs, seed=0)
    assert abs(res["sim"]["click_auc"] - 0.5) < 0.05
    gt = ground_truth_metrics(ev, shuffled, true_probs, true_leave, true_leave)
    assert gt["kl_per_slot"] > 0.1


def test_world_rollout_reproduces_logged_sessions(tiny_world: ParametricUserModel) -> None:
    """The coupling: a simulator with the true probabilities replays the logs exactly."""
    logs = generate(80, "mixed", 7, TINY_ENV, tiny_world)
    ev = build_events(logs, tiny_world.profile_encoder)
    profiles, seeds = generate_seeds(tiny_world, 80, 7)
    ro = rollout_logging_policy(
        ParametricUserModel(TINY_WORLD),
        TINY_ENV,
        profiles,
        seeds,
        "mixed",
        item_popularity(tiny_world),
        pool=13,
    )
    order = np.argsort([f"u7_{i}" for i in range(80)])  # events are sorted by user id
    assert np.array_equal(ro.lengths[order], ev.session_length)
    assert np.array_equal(ro.left[order], ev.session_left)


def test_teacher_forcing_matches_cached_stepping(
    tiny_world: ParametricUserModel, tiny_sim_dir: Path
) -> None:
    sim = GPT2UserSimulator.from_pretrained(tiny_sim_dir)
    logs = align_items(generate(20, "random", 5, TINY_ENV, tiny_world), sim.items_table())
    ev = build_events(logs, sim.profile_encoder)
    probs, leave = teacher_forced(sim, logs, ev)
    assert np.allclose(probs.sum(axis=1), 1.0)
    n = len(ev.session_length)
    sim.ensure_capacity(n)
    sim.start_sessions(np.arange(n), ev.profiles)
    stepped = np.zeros_like(probs)
    stepped_leave = np.zeros_like(leave)
    k = TINY_ENV.slate_size
    for t in range(int(ev.session_length.max())):
        st = np.nonzero(ev.step_index == t)[0]
        slots = ev.step_first_slot[st][:, None] + np.arange(k)
        out = sim.step(
            ev.step_session[st],
            ev.item[slots],
            forced_responses=ev.response[slots],
            forced_leave=ev.step_leave[st],
        )
        stepped[slots.reshape(-1)] = out.response_probs.reshape(-1, 3)
        stepped_leave[st] = out.leave_prob
    m = ev.step_has_target
    assert np.allclose(probs, stepped, atol=1e-5)
    assert np.allclose(leave[m], stepped_leave[m], atol=1e-5)
    assert np.all(np.isnan(leave[~m]))


def test_context_spans_and_the_window_floor(
    tiny_world: ParametricUserModel, tiny_sim_dir: Path
) -> None:
    from dataclasses import replace

    from evaluation.fidelity.events import context_spans

    sim = GPT2UserSimulator.from_pretrained(tiny_sim_dir)  # context 128: about 12 steps
    env = replace(TINY_ENV, max_episode_steps=40)
    logs = align_items(generate(60, "popular", 3, env, tiny_world), sim.items_table())
    ev = build_events(logs, sim.profile_encoder)
    spans = context_spans(sim, logs, ev)
    assert (spans[:, 1] > 0).any()  # some sessions are read through windows
    for s in range(len(ev.session_length)):
        mine = spans[spans[:, 0] == s]
        assert mine[0, 1] == mine[0, 2] == 0 and mine[-1, 3] == ev.session_length[s]
        assert np.array_equal(mine[1:, 2], mine[:-1, 3])  # predicted steps tile the session
        assert np.all(mine[:, 1] <= mine[:, 2])
    true_probs, _ = world_replay(tiny_world, logs, ev)
    ctx_probs, _ = world_replay(tiny_world, logs, ev, spans)
    whole = np.isin(ev.session, spans[spans[:, 1] > 0, 0], invert=True)
    assert np.allclose(ctx_probs[whole], true_probs[whole])
    kl = M.kl_categorical(true_probs, ctx_probs)
    assert kl.max() > 0 and kl.mean() < 0.05  # forgetting old drift costs a little


# ----------------------------------------------------------------------------- CLI

FAST = ["--users", "40", "--policy-users", "8", "--policy-envs", "8", "--baseline-users", "60"]


def test_validate_cli_end_to_end(tiny_sim_dir: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "v.json", tmp_path / "rep" / "report.md"
    argv = ["validate", "--sim", str(tiny_sim_dir), *FAST, "--json", str(out)]
    argv += ["--report", str(report), "--sim2real", "--ppo-steps", "64", "--ppo-envs", "8"]
    assert main([*argv, "--ppo-seeds", "2"]) == 0
    res = json.loads(out.read_text())
    for key in REQUIRED_KEYS:
        assert key in res and res[key] is not None, key
    assert res["kl_floor"] == 0.0 and res["floor_click_auc"] == res["oracle_click_auc"]
    assert res["setup"]["world"]["num_items"] == 50
    assert len(res["policy_returns"]) >= 8  # 7 baselines + the two PPO policies
    assert {"ppo_sim", "ppo_true"} <= set(res["policy_returns"])
    assert not any(p.endswith("_1") for p in res["policy_returns"])  # extra seeds: not ranked
    s2r = res["sim2real"]
    seed = res["setup"]["config"]["seed"]
    assert [p["seed"] for p in s2r["per_seed"]] == [seed, seed + 1]
    mean = lambda key: np.mean([p[key] for p in s2r["per_seed"]])
    ratio = mean("ppo_sim_true_return") / mean("ppo_true_true_return")
    assert res["sim2real_ratio"] == pytest.approx(ratio)
    for r in res["policy_returns"].values():
        assert set(r) == {"sim", "true"}
    for key in ("popularity_click_auc", "logreg_click_auc"):
        assert 0.0 <= res[key] <= 1.0
    assert res["warm_cold"]["users"]["cold"]["events"] == res["setup"]["heldout_events"]
    assert len(res["click_rate_per_position"]["logged"]) == TINY_ENV.slate_size
    assert report.exists() and "# Fidelity report" in report.read_text()
    assert len(list(report.parent.glob("report_*.png"))) == 5


def test_validate_on_training_logs_uses_held_out_users(
    tiny_sim_dir: Path, tiny_logs_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "v.json"
    argv = ["validate", "--sim", str(tiny_sim_dir), "--logs", str(tiny_logs_dir), *FAST]
    assert main([*argv, "--no-ranking", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["setup"]["heldout_users"] == 12  # train-sim's 10% validation users of 120
    assert res["kl_per_slot"] is not None  # the logs' world is the ground truth
    assert res["warm_cold"]["users"]["warm"]["events"] > 0
    assert res["kendall_tau"] is None and res["policy_returns"] == {}


def test_validate_on_imported_real_logs(tmp_path: Path) -> None:
    from simulators.lm.model import SimulatorConfig
    from simulators.logs import read_logs
    from simulators.training import SimulatorTrainer, TrainConfig

    fixture = Path(__file__).parent / "fixtures" / "movielens"
    logs_dir, sim_dir = tmp_path / "ml", tmp_path / "sim"
    assert main(["import", "movielens", str(fixture), "--out", str(logs_dir)]) == 0
    cfg = TrainConfig(size="tiny", max_steps=4, eval_every=2, batch_size=4, context_length=128)
    SimulatorTrainer(
        read_logs(logs_dir), sim_dir, cfg, SimulatorConfig(context_length=128), progress=False
    ).train()
    out, report = tmp_path / "v.json", tmp_path / "report.md"
    argv = ["validate", "--sim", str(sim_dir), "--logs", str(logs_dir), "--json", str(out)]
    assert main([*argv, "--report", str(report)]) == 0
    res = json.loads(out.read_text())
    for key in REQUIRED_KEYS:
        assert key in res
    assert res["ground_truth"] is None and res["kl_per_slot"] is None
    assert res["oracle_click_auc"] is None and res["ranking"] is None
    assert res["sessions"]["simulated_with"].startswith("the logged slates replayed")
    assert res["baselines"]["fitted_on_events"] > 0
    assert "No ground-truth world" in report.read_text()


def test_validate_a_recency_simulator_under_the_varied_policy(
    tiny_recency_sim_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "v.json"
    argv = ["validate", "--sim", str(tiny_recency_sim_dir), *FAST, "--policy", "varied"]
    assert main([*argv, "--no-ranking", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert 0.0 <= res["kl_per_slot"] < 1.0 and 0.0 <= res["click_auc"] <= 1.0
    assert "varied" in res["sessions"]["simulated_with"]


def test_membership_attack_gives_no_interval_for_a_handful_of_users():
    """1 member against 1 non-member scores AUC 0 or 1: no zero-width interval for it."""
    import numpy as np

    from evaluation.fidelity.privacy import MIN_ATTACK_USERS, membership_attack

    one = membership_attack(np.array([1.0]), np.array([2.0]))
    assert one["membership_attack_auc"] == 1.0 and one["membership_attack_auc_ci95"] is None
    rng = np.random.default_rng(0)
    n = MIN_ATTACK_USERS
    enough = membership_attack(rng.normal(0, 1, n), rng.normal(0.5, 1, n))
    lo, hi = enough["membership_attack_auc_ci95"]
    assert 0.0 <= lo < enough["membership_attack_auc"] < hi <= 1.0
