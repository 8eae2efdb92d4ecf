"""Counterfactual explanations: exact on the world, batched, and the CLI's bad input."""

from __future__ import annotations

import json

import numpy as np

from evaluation.explain import generated_situation, world_agreement
from recsim_env.cli import main
from simulators.explanations import explain
from simulators.gpt2_user import GPT2UserSimulator
from simulators.parametric import ParametricUserModel
from tests.conftest import TINY_WORLD


def _replay(world, profile, history, slate):
    w = ParametricUserModel(world.config)
    w.start_sessions(np.zeros(1, np.int64), profile[None])
    for items, responses in history:
        w.step(
            np.zeros(1, np.int64),
            np.asarray(items)[None],
            forced_responses=np.asarray(responses)[None],
            forced_leave=np.zeros(1, bool),
        )
    return w.score_slates(np.zeros(1, np.int64), np.asarray(slate)[None])[0]


def test_attributions_are_the_exact_counterfactuals_on_the_world() -> None:
    world = ParametricUserModel(TINY_WORLD)
    sit = generated_situation(world, world, seed=4, history_steps=4, slate_size=3)
    expl = explain(world, sit.profile, sit.history, sit.slate)
    assert expl.probs.shape == (3, 3) and len(expl.features) == expl.masked_probs.shape[0]
    np.testing.assert_allclose(expl.probs, _replay(world, sit.profile, sit.history, sit.slate))
    t = 2
    without = _replay(world, sit.profile, sit.history[:t] + sit.history[t + 1 :], sit.slate)
    np.testing.assert_allclose(expl.masked_probs[expl.features.index(f"history:{t}")], without)
    age = [f for f in expl.features if f == "profile:age_band"]
    assert age, expl.features
    engaged = 1 - expl.probs[:, 0]
    np.testing.assert_allclose(
        expl.engagement_effects[0], engaged - (1 - expl.masked_probs[0, :, 0])
    )


def test_the_simulator_explains_and_is_compared_with_the_world(tiny_sim_dir) -> None:
    sim = GPT2UserSimulator.from_pretrained(tiny_sim_dir)
    world = ParametricUserModel(TINY_WORLD)
    sit = generated_situation(sim, world, seed=1, history_steps=3, slate_size=3)
    expl = explain(sim, sit.profile, sit.history, sit.slate)
    assert np.isfinite(expl.effects).all() and expl.probs.shape == (3, 3)
    res = world_agreement(sim, world, users=4, seed=0, history_steps=3, slate_size=3)
    assert res["users"] == 4 and -1 <= (res["spearman_mean"] or 0) <= 1


def test_item_side_attributions_are_exact_counterfactuals(tiny_sim_dir) -> None:
    import pytest
    import torch

    sim = GPT2UserSimulator.from_pretrained(tiny_sim_dir)
    world = ParametricUserModel(TINY_WORLD)
    sit = generated_situation(sim, world, seed=2, history_steps=2, slate_size=3)
    expl = explain(sim, sit.profile, sit.history, sit.slate)
    assert expl.features[-2:] == ["item:attributes", "item:title"]
    # the attributes channel is feat_proj(features) with no bias: zeroing the slate items'
    # features in a copy of the simulator is the same counterfactual, computed another way
    other = GPT2UserSimulator.from_pretrained(tiny_sim_dir)
    with torch.no_grad():
        other.model.item_features[torch.as_tensor(sit.slate)] = 0.0
    manual = explain(other, sit.profile, sit.history, sit.slate).probs
    np.testing.assert_allclose(
        expl.masked_probs[expl.features.index("item:attributes")], manual, atol=1e-5
    )
    assert not np.allclose(manual, expl.probs, atol=1e-4)  # the channel matters here
    again = explain(sim, sit.profile, sit.history, sit.slate)  # the mask does not outlive its use
    np.testing.assert_allclose(again.probs, expl.probs, atol=1e-6)
    with pytest.raises(ValueError, match="allowed: attributes, title"):
        with sim.without_item_side(sit.slate, "colour"):
            pass
    with pytest.raises(ValueError, match="no item side-information channel"):
        world.without_item_side(sit.slate, "title")


def test_explain_cli(tiny_sim_dir, tiny_logs_dir, tmp_path, capsys) -> None:
    out = tmp_path / "e.json"
    from simulators.logs import read_logs

    session = str(read_logs(tiny_logs_dir).steps["session_id"].iloc[0])
    base = ["explain", "--quiet", "--sim", str(tiny_sim_dir)]
    assert (
        main([*base, "--logs", str(tiny_logs_dir), "--session", session, "--json", str(out)]) == 0
    )
    data = json.loads(out.read_text())
    assert data["explanation"]["behaviours"] == ["skip", "click", "buy"]
    argv = [*base, "--logs", str(tiny_logs_dir), "--session", session, "--step", "2"]
    capsys.readouterr()
    assert main(argv) == 0
    shown = capsys.readouterr().out  # the history of step 2 is steps 0 and 1, as --step counts
    assert "step 2 of the logs" in shown and "step 0" in shown and "step 1" in shown
    assert "step 2:" not in shown and "step 2 (" not in shown
    assert main([*base, "--logs", str(tiny_logs_dir)]) == 2
    assert main([*base, "--logs", str(tiny_logs_dir), "--session", "no-such-session"]) == 2
    assert "is not in the logs; their session ids look like " in capsys.readouterr().err
    assert (
        main([*base, "--logs", str(tiny_logs_dir), "--session", session, "--slate", "nope,i1"]) == 2
    )
    assert "not in the simulator's catalog" in capsys.readouterr().err
    assert main([*base, "--slate", "i1,i2,i1"]) == 2
    assert "i1 appear(s) more than once; a slate shows each item once" in capsys.readouterr().err
