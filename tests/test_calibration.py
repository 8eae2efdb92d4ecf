"""Calibration users: the Platt scaling train-sim fits on users it does not train on."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recsim_env.cli import main
from simulators.gpt2_user import GPT2UserSimulator
from simulators.lm.model import SimulatorConfig, calibrated_logits, engagement_log_odds
from simulators.training import TrainConfig
from simulators.training.calibration import calibration_mask, engagement_log_loss, fit_platt
from simulators.training.data import split_by_user
from tests.conftest import train_tiny


def test_calibrated_logits_scale_the_engagement_odds_and_keep_the_rest() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=g) * 2  # 3 behaviours, continue, leave
    z = engagement_log_odds(logits, 3)
    out = calibrated_logits(logits, 3, 0.7, -0.4)
    p, q = torch.softmax(logits[:, :3], -1), torch.softmax(out[:, :3], -1)
    torch.testing.assert_close(q[:, 0], torch.sigmoid(-(0.7 * z - 0.4)))
    # each engagement keeps its share of p(engage); continue/leave untouched
    torch.testing.assert_close(q[:, 1] / q[:, 2], p[:, 1] / p[:, 2])
    torch.testing.assert_close(out[:, 3:], logits[:, 3:])
    same = torch.softmax(calibrated_logits(logits, 3, 1.0, 0.0)[:, :3], -1)
    torch.testing.assert_close(same, p)


def test_fit_platt_recovers_the_scaling_and_refuses_one_sided_outcomes() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20_000)
    engaged = rng.random(len(z)) < 1 / (1 + np.exp(-(0.7 * z - 0.3)))
    slope, intercept = fit_platt(z, engaged)
    assert abs(slope - 0.7) < 0.05 and abs(intercept + 0.3) < 0.05
    assert engagement_log_loss(z, engaged, slope, intercept) < engagement_log_loss(z, engaged)
    with pytest.raises(ValueError, match="engaged and skipped"):
        fit_platt(z, np.ones(len(z), dtype=bool))
    with pytest.raises(ValueError, match="do not rank"):
        fit_platt(z, rng.random(len(z)) < 1 / (1 + np.exp(z)))  # odds backwards


def test_calibration_users_leave_the_validation_split_alone() -> None:
    users = [f"u{i % 40}" for i in range(200)]  # 40 users, 5 sessions each
    is_val = split_by_user(users, 0.1, 3)
    is_cal = calibration_mask(users, is_val, 0.25, 3)
    assert not (is_val & is_cal).any()
    assert len({u for u, c in zip(users, is_cal) if c}) == 10
    # a user's sessions are all in or all out; the same seed draws the same users
    assert all(is_cal[i] == is_cal[i % 40] for i in range(200))
    assert (calibration_mask(users, is_val, 0.25, 3) == is_cal).all()
    assert not calibration_mask(users, is_val, 0.0, 3).any()
    with pytest.raises(ValueError, match=r"no training user would remain; use at most 0\.875"):
        calibration_mask(users, is_val, 0.89, 3)
    two = ["a", "a", "b"]  # one user left after validation: no share can work
    with pytest.raises(ValueError, match="calibration needs a user of its own"):
        calibration_mask(two, split_by_user(two, 0.1, 0), 1e-9, 0)


def test_calibration_settings_are_checked(tmp_path: Path, tiny_logs_dir: Path, capsys) -> None:
    from simulators.training.dp import DPConfig

    with pytest.raises(ValueError, match=r"calibration_fraction must be in \[0, 0.9\)"):
        TrainConfig(calibration_fraction=0.95)
    with pytest.raises(ValueError, match="dp-epsilon"):
        TrainConfig(calibration_fraction=0.1, dp=DPConfig(epsilon=8.0))
    for bad in [(0.0, 1.0), (1.0,), (1.0, float("nan")), 0.5, {"slope": 1, "intercept": 0}]:
        with pytest.raises(ValueError, match=r"must be \(slope > 0, intercept\)"):
            SimulatorConfig(response_calibration=bad)  # type: ignore[arg-type]
    argv = ["train-sim", "--logs", str(tiny_logs_dir), "--out", str(tmp_path / "s")]
    assert main([*argv, "--calibration-fraction", "1.5"]) == 2
    assert "--calibration-fraction: must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert main([*argv, "--calibration-fraction", "0.95"]) != 0
    assert "calibration_fraction must be in [0, 0.9)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def calibrated_sim_dir(tiny_logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny simulator trained with a quarter of the users held out for calibration."""
    out = tmp_path_factory.mktemp("calibrated")
    return train_tiny(
        tiny_logs_dir, out, SimulatorConfig(context_length=128), calibration_fraction=0.25
    )


def test_the_saved_simulator_predicts_through_its_calibration(calibrated_sim_dir: Path) -> None:
    meta = json.loads((calibrated_sim_dir / "simulator_config.json").read_text())
    record = meta["extra"]["training"]["calibration"]
    assert meta["extra"]["training"]["train_users"] == 120 - 12 - 30  # validation 10%, cal. 25%
    sim = GPT2UserSimulator.from_pretrained(calibrated_sim_dir, capacity=4)
    cal = sim.sim_config.response_calibration
    assert cal == tuple(meta["simulator"]["response_calibration"])
    assert (record["slope"], record["intercept"]) == pytest.approx(cal)
    assert record["fitted"] and record["users"] == 30
    assert record["log_loss_after"] <= record["log_loss_before"]
    rows = np.arange(4)
    slates = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
    sim.start_sessions(rows, sim.population[:4])
    calibrated = sim.peek(rows, slates).response_probs
    sim.model.sim_config = replace(sim.sim_config, response_calibration=None)
    raw = sim.peek(rows, slates).response_probs
    z = np.log(1 - raw[..., 0]) - np.log(raw[..., 0])
    expected = 1 / (1 + np.exp(cal[0] * z + cal[1]))
    np.testing.assert_allclose(calibrated[..., 0], expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(calibrated, raw)


def test_validate_keeps_calibration_users_out_of_the_warm_users(
    calibrated_sim_dir: Path, tiny_logs_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "v.json"
    argv = ["validate", "--sim", str(calibrated_sim_dir), "--logs", str(tiny_logs_dir)]
    report = tmp_path / "v.md"
    assert main([*argv, "--no-ranking", "--json", str(out), "--report", str(report)]) == 0
    res = json.loads(out.read_text())
    assert any("30 calibration users" in n for n in res["notes"])
    assert res["setup"]["simulator_training"]["calibration"]["users"] == 30
    text = report.read_text()
    assert "calibration users that train-sim did not train on" in text
    cold = res["warm_cold"]["items"]["cold"]["events"]  # the headline says what it rests on
    assert f"cold-item click AUC ({cold:,} events" in text


def test_a_calibration_that_cannot_be_fitted_is_reported_not_hidden(
    tiny_logs_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import simulators.training.trainer as trainer_module

    def refuse(z, engaged):
        raise ValueError("calibration needs engaged and skipped responses, got 0 engaged")

    monkeypatch.setattr(trainer_module, "fit_platt", refuse)
    sim, summary = tmp_path / "sim", tmp_path / "train.json"
    argv = ["train-sim", "--logs", str(tiny_logs_dir), "--out", str(sim), "--size", "tiny"]
    argv += ["--max-steps", "2", "--eval-every", "2", "--context-length", "128"]
    assert main([*argv, "--calibration-fraction", "0.2", "--json", str(summary)]) == 0
    assert "NOT calibrated (24 calibration users held out" in capsys.readouterr().out
    record = json.loads(summary.read_text())["calibration"]
    assert record["fitted"] is False and "0 engaged" in record["reason"]
    assert GPT2UserSimulator.from_pretrained(sim).sim_config.response_calibration is None
    report = tmp_path / "v.md"
    argv = ["validate", "--sim", str(sim), "--logs", str(tiny_logs_dir), "--no-ranking"]
    assert main([*argv, "--report", str(report), "--json", str(tmp_path / "v.json")]) == 0
    assert "Calibration on 24 calibration users (`--calibration-fraction`) was not fitted" in (
        report.read_text()
    )
