"""User-level DP fine-tuning (simulators.training.dp) and the membership attack of validate."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recsim_env.cli import main
from simulators.gpt2_user import GPT2UserSimulator, build_user_lm
from simulators.lm.model import SimulatorConfig, packed_loss
from simulators.logs import read_logs
from simulators.training import SimulatorTrainer, TrainConfig
from simulators.training.data import collate, encode_logs, session_windows
from simulators.training.dp import (
    DPConfig,
    clip_and_sum,
    noise_multiplier,
    per_user_gradients,
    row_nll,
    spent_epsilon,
    synthetic_population,
    user_rows,
)

pytest.importorskip("opacus", reason="the dp extra (opacus) is not installed")

TINY = ["--size", "tiny", "--context-length", "128", "--seed", "1"]


@pytest.fixture(scope="module")
def encoded(tiny_logs_dir):
    logs = read_logs(tiny_logs_dir)
    return logs, encode_logs(logs)


def _model(encoded, window: int):
    logs, data = encoded
    cfg = SimulatorConfig(
        context_length=128, window_steps=3, attention_window_steps=window, session_summary=True
    )
    torch.manual_seed(0)
    model = build_user_lm(data.tokenizer, logs.items, cfg, "tiny", None)
    assert model.summary_emb is not None
    with torch.no_grad():  # a trained-from-zero channel would hide a wrong gradient
        model.summary_emb.weight.normal_(0, 0.02)
    return model


def _user_block(encoded, users: int, max_rows: int = 2):
    """(U, R, 128) rows of the first users, each user's windows in rows of their own (and at
    least one padding row each)."""
    _, data = encoded
    prefix = 1 + data.tokenizer.profile_slots
    by_user: dict[str, list] = {}
    for s, u in zip(data.sessions, data.users):
        by_user.setdefault(u, []).extend(session_windows(s, 128, 3, prefix))
    rng = np.random.default_rng(0)
    rows = [user_rows(by_user[u], 128, max_rows, rng) for u in sorted(by_user)[:users]]
    width = max(len(r) for r in rows) + 1  # a padding row for every user
    pad = {
        k: np.full(128, -1 if k in ("items", "segment_ids", "step_ids") else 0) for k in rows[0][0]
    }
    rows = [r + [pad] * (width - len(r)) for r in rows]
    flat = collate([r for user in rows for r in user])
    return {k: v.view(users, width, 128) for k, v in flat.items()}


@pytest.mark.parametrize("window", [0, 2])
def test_fixed_shape_loss_equals_packed_loss(encoded, window):
    model = _model(encoded, window)
    block = _user_block(encoded, 6)
    flat = {k: v.reshape(-1, 128) for k, v in block.items()}
    with torch.no_grad():
        _, resp, leave, n = packed_loss(model, flat)
        nll, count = row_nll(model, flat)
    assert int(count.sum()) == int(n) > 0
    assert float(nll.sum()) == pytest.approx(float(resp + leave), rel=1e-5)
    pad_rows = flat["segment_ids"].max(1).values < 0
    assert pad_rows.any() and (nll[pad_rows] == 0).all()


@pytest.mark.parametrize("window", [0, 2])
def test_per_user_gradients_equal_autograd_per_user(encoded, window):
    model = _model(encoded, window)
    block = _user_block(encoded, 5)
    grads, losses = per_user_gradients(model, block)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == set(params)
    for u in range(5):
        nll, count = row_nll(model, {k: v[u] for k, v in block.items()})
        loss = nll.sum() / count.sum()
        assert float(losses[u]) == pytest.approx(float(loss), rel=1e-5)
        ref = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (name, p), g in zip(params.items(), ref):
            g = torch.zeros_like(p) if g is None else g
            assert torch.allclose(grads[name][u], g, atol=1e-6, rtol=1e-4), name


def test_clipping_bounds_every_users_contribution(encoded):
    model = _model(encoded, 0)
    grads, _ = per_user_gradients(model, _user_block(encoded, 6))
    total, norms = clip_and_sum(grads, max_norm=0.5)
    assert (norms > 0.5).all()  # mean-NLL gradients at initialisation are larger than 0.5
    for u in range(6):  # one user's share of the sum: their gradient scaled to norm <= C
        alone, _ = clip_and_sum({n: g[u : u + 1] for n, g in grads.items()}, 0.5)
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in alone.values()))
        assert norm == pytest.approx(0.5, rel=1e-4)
    small, _ = clip_and_sum(grads, max_norm=1e6)  # nothing clipped: the plain sum
    for name, g in grads.items():
        assert torch.allclose(small[name], g.sum(0), atol=1e-6)
        assert total[name].shape == g.shape[1:]


def test_accountant_spends_at_most_the_target():
    for eps in (1.0, 8.0):
        sigma = noise_multiplier(eps, 1e-5, 0.01, 300)
        spent = spent_epsilon(sigma, 0.01, 300, 1e-5)
        assert eps - 0.02 <= spent <= eps
        assert spent_epsilon(sigma, 0.01, 100, 1e-5) < spent  # fewer steps, less spent
    assert noise_multiplier(1.0, 1e-5, 0.01, 300) > noise_multiplier(8.0, 1e-5, 0.01, 300)
    with pytest.raises(ValueError, match="no noise level"):
        noise_multiplier(1e-4, 1e-12, 1.0, 10_000)


def test_dp_config_validates_its_fields():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="epsilon"):
            DPConfig(epsilon=bad)
    with pytest.raises(ValueError, match="delta"):
        DPConfig(epsilon=1.0, delta=1.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        DPConfig(epsilon=1.0, max_grad_norm=0.0)


def test_synthetic_population_holds_one_value_per_field(tiny_world):
    enc = tiny_world.profile_encoder
    pop = synthetic_population(enc, 500, seed=0)
    assert pop.shape == (500, enc.slots)
    for col, field in enumerate(enc.fields):
        assert all(enc.vocab[i].startswith(f"{field}=") for i in pop[:, col])
    assert (pop[:, len(enc.fields) :] == -1).all()
    assert len(np.unique(pop[:, 0])) > 1  # drawn, not constant


def _dp_args(logs, out, eps="8", *extra):
    return [
        "train-sim",
        "--logs",
        str(logs),
        "--out",
        str(out),
        *TINY,
        "--max-steps",
        "6",
        "--eval-every",
        "3",
        "--dp-epsilon",
        eps,
        "--dp-users-per-step",
        "16",
        *extra,
    ]


def test_dp_training_end_to_end_through_the_cli(tiny_logs_dir, tmp_path, capsys):
    from evaluation.model_card import render

    out = tmp_path / "sim"
    assert main([*_dp_args(tiny_logs_dir, out), "--json", str(tmp_path / "t.json")]) == 0
    assert "differential privacy: epsilon" in capsys.readouterr().out
    summary = json.loads((tmp_path / "t.json").read_text())
    assert 7.9 <= summary["dp_epsilon"] <= 8.0 and summary["dp_delta"] == 1e-5
    priv = summary["privacy"]
    assert priv["steps"] == 6 and priv["expected_users_per_step"] == 16
    assert priv["noise_multiplier"] > 0 and priv["max_grad_norm"] == 1.0
    assert priv["sample_rate"] == pytest.approx(16 / priv["training_users"])
    meta = json.loads((out / "simulator_config.json").read_text())
    assert meta["extra"]["privacy"]["epsilon"] == summary["dp_epsilon"]  # all steps taken
    sim = GPT2UserSimulator.from_pretrained(out, capacity=4)  # hashes still valid
    assert sim.extra["privacy"]["delta"] == 1e-5
    train_profiles = {tuple(p) for p in encode_logs(read_logs(tiny_logs_dir)).profiles}
    assert len(sim.population) == 50_000  # synthetic, not the 108 training profiles
    assert sum(tuple(p) in train_profiles for p in sim.population[:200]) < 200
    assert bool(sim.model.item_known.all())
    rates = {"click_rate": 0.1, "buy_rate": 0.05, "mean_session_length": 3.0}
    rates["click_rate_per_position"] = [0.1]
    card = render(
        out,
        {"users": 1, "seed": 0, "policy": "random", "true": rates, "simulated": rates},
        "llm-usersim train-sim ...",
    )
    assert f"epsilon = {summary['dp_epsilon']:.3f}" in card and "Not covered" in card
    import gymnasium as gym

    env = gym.make("LLMUserSim-v0", simulator=sim, slate_size=3, num_candidates=8)
    env.reset(seed=0)
    _, reward, *_ = env.step(env.action_space.sample())
    assert math.isfinite(reward)


def test_card_says_no_dp_without_it(tiny_sim_dir):
    from evaluation.model_card import privacy_lines

    text = "\n".join(privacy_lines(None, 108))
    assert "without differential privacy" in text and "population.safetensors" in text


def test_dp_resume_continues_the_same_run_and_refuses_other_budgets(tiny_logs_dir, tmp_path):
    logs = read_logs(tiny_logs_dir)
    dp = DPConfig(epsilon=4.0, expected_users=16, noise_seed=123)
    cfg = TrainConfig(size="tiny", context_length=128, max_steps=6, eval_every=3, dp=dp)
    whole = SimulatorTrainer(logs, tmp_path / "whole", cfg, progress=False)
    whole.train()
    part = SimulatorTrainer(logs, tmp_path / "part", cfg, progress=False)
    part.train(stop_after_steps=4)
    again = SimulatorTrainer(logs, tmp_path / "part", cfg, progress=False)
    state = again.train(resume=True)
    assert state["step"] == 6
    assert state["history"][-1]["val_loss"] == pytest.approx(
        whole.state["history"][-1]["val_loss"], rel=1e-6
    )
    assert again.privacy() == whole.privacy()
    for changed, words in (
        (
            TrainConfig(
                size="tiny",
                context_length=128,
                max_steps=6,
                eval_every=3,
                dp=DPConfig(epsilon=8.0, expected_users=16, noise_seed=123),
            ),
            "dp-epsilon",
        ),
        (
            TrainConfig(size="tiny", context_length=128, max_steps=9, eval_every=3, dp=dp),
            "planned steps",
        ),
        (
            TrainConfig(size="tiny", context_length=128, max_steps=6, eval_every=3),
            "trained with --dp-epsilon",
        ),
    ):
        with pytest.raises(ValueError, match=words):
            SimulatorTrainer(logs, tmp_path / "part", changed, progress=False).train(resume=True)


@pytest.mark.parametrize("eps", ["0", "-1", "nan", "inf"])
def test_bad_epsilon_is_one_line_and_exit_2(tiny_logs_dir, tmp_path, capsys, eps):
    assert main(_dp_args(tiny_logs_dir, tmp_path / "x", eps)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dp-epsilon" in err
    assert not (tmp_path / "x").exists()


def test_dp_flags_without_epsilon_are_refused(tiny_logs_dir, tmp_path, capsys):
    args = ["train-sim", "--logs", str(tiny_logs_dir), "--out", str(tmp_path / "x"), *TINY]
    assert main([*args, "--dp-delta", "1e-6"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dp-delta applies only with --dp-epsilon" in err


def test_dp_without_opacus_says_what_to_install(tiny_logs_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # import opacus -> ImportError
    assert main(_dp_args(tiny_logs_dir, tmp_path / "x")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'llm-usersim[dp]'" in err


def _nll_of(sim, logs):
    from evaluation.fidelity.events import (
        add_shown_items,
        align_items,
        build_events,
        teacher_forced,
    )
    from evaluation.fidelity.privacy import user_nll

    add_shown_items(sim, logs)
    logs = align_items(logs, sim.items_table())
    events = build_events(logs, sim.profile_encoder)
    return user_nll(events, *teacher_forced(sim, logs, events))


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A tiny simulator trained long on 30 users of 300 (the rest held out)."""
    from recsim_env.log_generation import generate
    from simulators.logs import write_logs
    from simulators.parametric import ParametricUserModel
    from tests.conftest import TINY_ENV, TINY_WORLD

    root = tmp_path_factory.mktemp("overfit")
    logs_dir = write_logs(
        generate(300, "random", 5, TINY_ENV, ParametricUserModel(TINY_WORLD)), root / "logs"
    )
    cfg = TrainConfig(
        size="tiny",
        context_length=128,
        max_steps=150,
        eval_every=150,
        val_fraction=0.9,
        batch_size=4,
        lr=1e-2,
        warmup_steps=10,
        patience=50,
    )
    SimulatorTrainer(read_logs(logs_dir), root / "sim", cfg, progress=False).train()
    return logs_dir, root / "sim"


def test_membership_attack_finds_the_training_users_of_an_overfit_model(overfit):
    from evaluation.fidelity import ValidateConfig, run_validation

    logs_dir, sim_dir = overfit
    res = run_validation(
        ValidateConfig(sim=str(sim_dir), logs=str(logs_dir), ranking=False, warm_users=0, users=60)
    )
    priv = res["privacy"]
    assert res["membership_attack_auc"] == priv["membership_attack_auc"]
    assert priv["dp"] is False and priv["dp_epsilon"] is None
    assert priv["membership_members"] == 30 and priv["membership_nonmembers"] == 60
    assert priv["membership_attack_auc"] > 0.75
    assert priv["membership_attack_auc_ci95"][0] > 0.5
    assert priv["member_mean_nll"] < priv["nonmember_mean_nll"]


def test_membership_attack_on_a_random_split_of_non_members_is_chance(overfit):
    from evaluation.fidelity.events import select_users
    from evaluation.fidelity.privacy import membership_attack
    from simulators.training.data import split_by_user

    logs_dir, sim_dir = overfit
    logs = read_logs(logs_dir)
    sim = GPT2UserSimulator.from_pretrained(sim_dir)
    users = sorted(set(logs.steps["user_id"].astype(str)))
    held = [u for u, v in zip(users, split_by_user(users, 0.9, 0)) if v]
    users_nll, nll = _nll_of(sim, select_users(logs, set(held)))
    half = np.random.default_rng(0).permutation(len(nll)) < len(nll) // 2
    res = membership_attack(nll[half], nll[~half])
    assert res["membership_members"] + res["membership_nonmembers"] == len(held) > 200
    assert abs(res["membership_attack_auc"] - 0.5) < 0.1
    assert res["membership_attack_auc_ci95"][0] < 0.5 < res["membership_attack_auc_ci95"][1]


def test_membership_is_not_computed_without_training_users():
    from evaluation.fidelity.privacy import privacy_section

    run = SimpleNamespace(
        sim=SimpleNamespace(extra={"privacy": {"epsilon": 1.0, "delta": 1e-5}}),
        data=SimpleNamespace(members_known=False, train=None),
        sim_probs=None,
        lap=lambda *a: None,
    )
    out = privacy_section(run)  # type: ignore[arg-type]
    assert out["membership_attack_auc"] is None and "not known" in out["membership_note"]
    assert out["dp_epsilon"] == 1.0


def test_dp_refuses_a_data_parallel_launch_in_one_line(
    tiny_logs_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what accelerate launch --num_processes 2 sets
    assert main(_dp_args(tiny_logs_dir, tmp_path / "x")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--dp-epsilon trains in one process, not in 2 data-parallel ones" in err
    assert not (tmp_path / "x").exists()


def test_steps_that_sample_no_user_are_noise_only_and_keep_progress_finite(tiny_logs_dir, tmp_path):
    logs = read_logs(tiny_logs_dir)
    dp = DPConfig(epsilon=8.0, expected_users=1, noise_seed=3)
    cfg = TrainConfig(size="tiny", context_length=128, max_steps=6, eval_every=3, dp=dp)
    trainer = SimulatorTrainer(logs, tmp_path / "sim", cfg, progress=False)
    assert trainer.dp is not None
    empty = [s for s in range(6) if len(trainer.dp.sample_users(s)) == 0]
    assert empty  # at q = 1/N most steps sample nobody
    before = [p.detach().clone() for p in trainer.model.parameters()]
    assert math.isnan(trainer.dp.compute_gradients(trainer.model, empty[0]))
    grads = [p.grad for p in trainer.model.parameters()]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)  # the noise alone
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    trainer.train()
    assert "nan" not in trainer.progress_line()
    assert "loss -" not in trainer.progress_line() or len(empty) == 6


def test_unreachable_epsilon_is_one_line_without_accountant_warnings(
    tiny_logs_dir, tmp_path, capsys, recwarn
):
    assert main(_dp_args(tiny_logs_dir, tmp_path / "x", "0.0001")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no noise level reaches it over 6 steps" in err
    assert not [w for w in recwarn if "Optimal order" in str(w.message)]
    assert not (tmp_path / "x").exists()
