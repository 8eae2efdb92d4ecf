import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from simulators.gpt2_user import CheckpointError, GPT2UserSimulator
from simulators.lm.attention import FullAttention
from simulators.lm.gpt2 import GPT2Backbone, make_gpt2_config
from simulators.lm.model import SimulatorConfig, UserLM, packed_probs
from simulators.logs import read_logs
from simulators.training import SimulatorTrainer, TrainConfig
from tests.conftest import session_batch


def test_functional_forward_matches_hugging_face():
    torch.manual_seed(0)
    model = UserLM(
        GPT2Backbone(GPT2LMHeadModel(make_gpt2_config("tiny", 40, 64))),
        SimulatorConfig(),
        torch.randn(6, 2),
        torch.zeros(6, 3, dtype=torch.long),
        torch.ones(6, dtype=torch.bool),
        (5, 6, 7, 3, 4),
    ).eval()
    ids = torch.randint(0, 40, (3, 20))
    pos = torch.arange(20).expand(3, -1)
    x = model.backbone.embed_tokens(ids)
    mask = torch.ones(20, 20, dtype=torch.bool).tril().expand(3, 1, 20, 20)
    ours = model.backbone(x, pos, FullAttention(mask))
    lm = model.backbone.lm
    ref = lm(inputs_embeds=x, position_ids=pos, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_dropout_acts_in_training_only_and_is_saved_with_the_config(tmp_path):
    torch.manual_seed(0)
    backbone = GPT2Backbone(GPT2LMHeadModel(make_gpt2_config("tiny", 40, 64))).train()
    x = torch.randn(2, 10, 32)
    pos = torch.arange(10).expand(2, -1)
    attend = FullAttention(torch.ones(10, 10, dtype=torch.bool).tril().expand(2, 1, 10, 10))
    plain = backbone(x, pos, attend)  # dropout 0 by default, training mode or not
    backbone.set_dropout(0.3)
    assert not torch.allclose(backbone(x, pos, attend), plain)
    backbone.eval()
    torch.testing.assert_close(backbone(x, pos, attend), plain)
    with torch.no_grad():  # the fused inference path: never dropped out
        torch.testing.assert_close(backbone(x, pos, attend), plain)
    saved = GPT2Backbone.from_config_dict(json.loads(backbone.config_json()))
    assert saved.dropout == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        backbone.set_dropout(1.0)
    # a pretrained base's own pdrop fields never switch it on
    base = make_gpt2_config("tiny", 40, 64)
    base.resid_pdrop = 0.1
    assert GPT2Backbone(GPT2LMHeadModel(base)).dropout == 0.0


def test_kv_cache_stepping_matches_full_reencode(tiny_sim_dir):
    sim = GPT2UserSimulator.from_pretrained(tiny_sim_dir, capacity=3)
    rng = np.random.default_rng(0)
    profiles = sim.population[:3]
    sim.start_sessions(np.arange(3), profiles)
    slates = [
        np.stack([rng.choice(sim.num_items, 3, replace=False) for _ in range(3)]) for _ in range(4)
    ]
    resps = [rng.integers(0, 3, (3, 3)) for _ in range(4)]
    stepped = [sim.step(np.arange(3), s, forced_responses=r) for s, r in zip(slates, resps)]
    for row in range(3):
        with torch.no_grad():
            probs, kind = packed_probs(
                sim.model,
                session_batch(
                    sim, profiles[row], [s[row] for s in slates], [r[row] for r in resps]
                ),
            )
        full_resp = probs[kind == 1][:, :3].numpy().reshape(4, 3, 3)
        full_leave = probs[kind == 2][:, 4].numpy()
        np.testing.assert_allclose(
            np.stack([o.response_probs[row] for o in stepped]), full_resp, atol=1e-5
        )
        np.testing.assert_allclose([o.leave_prob[row] for o in stepped[:3]], full_leave, atol=1e-5)


def test_peek_does_not_advance_the_session(tiny_sim_dir):
    sim = GPT2UserSimulator.from_pretrained(tiny_sim_dir, capacity=2)
    sim.start_sessions(np.arange(2), sim.population[:2])
    slate = np.array([[1, 2, 3], [4, 5, 6]])
    u = np.full((2, 4), 0.5)
    a = sim.peek(np.arange(2), slate, u)
    b = sim.step(np.arange(2), slate, u)
    np.testing.assert_allclose(a.response_probs, b.response_probs, atol=1e-6)


def test_context_is_bounded_by_sliding_window(tiny_sim_dir):
    sim = GPT2UserSimulator.from_pretrained(tiny_sim_dir, capacity=2)
    sim.start_sessions(np.arange(2), sim.population[:2])
    rng = np.random.default_rng(1)
    before = sim.cache.k.data_ptr()
    for _ in range(40):  # 40 steps x 10 tokens > context 128
        out = sim.step(np.arange(2), rng.integers(0, sim.num_items, (2, 3)), rng.random((2, 4)))
        assert np.isfinite(out.response_probs).all()
        assert int(sim.cache.lengths.max()) <= sim.sim_config.context_length
    assert sim.cache.k.data_ptr() == before  # preallocated: never re-allocated


def test_save_load_round_trip_gives_identical_logits(tiny_sim_dir, tmp_path):
    sim = GPT2UserSimulator.from_pretrained(tiny_sim_dir)
    sim.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            "config.json",
            "model.safetensors",
            "population.safetensors",
            "vocab.json",
            "simulator_config.json",
        ]
    )
    for name in ("config.json", "vocab.json", "simulator_config.json"):
        json.loads((tmp_path / name).read_text())
    again = GPT2UserSimulator.from_pretrained(tmp_path)
    for key, val in sim.model.state_dict().items():
        assert torch.equal(val, again.model.state_dict()[key]), key
    batch = session_batch(sim, sim.population[0], [np.array([1, 2, 3])], [np.array([0, 1, 0])])
    with torch.no_grad():
        assert torch.equal(packed_probs(sim.model, batch)[0], packed_probs(again.model, batch)[0])
    assert np.array_equal(sim.population, again.population)


def _copy_ckpt(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _rehash(ckpt):
    """Record the files' current hashes in the manifest (to reach the checks behind it)."""
    from simulators.gpt2_user.checkpoint import HASHED_FILES, file_sha256

    meta = json.loads((ckpt / "simulator_config.json").read_text())
    meta["sha256"] = {name: file_sha256(ckpt / name) for name in HASHED_FILES}
    (ckpt / "simulator_config.json").write_text(json.dumps(meta))


def test_corrupt_missing_or_mismatched_checkpoints_name_the_file(tiny_sim_dir, tmp_path):
    bad = _copy_ckpt(tiny_sim_dir, tmp_path / "truncated")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: content does not match"):
        GPT2UserSimulator.from_pretrained(bad)
    _rehash(bad)  # past the manifest, the file itself is unreadable
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*corrupt or truncated"):
        GPT2UserSimulator.from_pretrained(bad)
    missing = _copy_ckpt(tiny_sim_dir, tmp_path / "missing")
    (missing / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match=r"vocab\.json: file is missing"):
        GPT2UserSimulator.from_pretrained(missing)
    mismatch = _copy_ckpt(tiny_sim_dir, tmp_path / "mismatch")
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["vocab_size"] += 3
    (mismatch / "config.json").write_text(json.dumps(cfg))
    _rehash(mismatch)
    with pytest.raises(CheckpointError, match=r"config\.json: vocab_size"):
        GPT2UserSimulator.from_pretrained(mismatch)
    wrong_shape = _copy_ckpt(tiny_sim_dir, tmp_path / "shape")
    cfg = json.loads((wrong_shape / "config.json").read_text())
    cfg["n_embd"] = 64
    (wrong_shape / "config.json").write_text(json.dumps(cfg))
    _rehash(wrong_shape)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weights do not match"):
        GPT2UserSimulator.from_pretrained(wrong_shape)
    with pytest.raises(CheckpointError, match="does not exist"):
        GPT2UserSimulator.from_pretrained(tmp_path / "nowhere")


def _tiny_config(**settings: Any) -> TrainConfig:
    """A tiny network on 128-token rows, 4 a step (`settings` set the budget and the rest)."""
    return TrainConfig(size="tiny", batch_size=4, context_length=128, lr=3e-3, **settings)


def test_training_lowers_validation_loss(tiny_logs_dir, tmp_path):
    cfg = _tiny_config(max_steps=40, eval_every=40, warmup_steps=5)
    trainer = SimulatorTrainer(
        read_logs(tiny_logs_dir), tmp_path, cfg, SimulatorConfig(context_length=128), progress=False
    )
    before = trainer.validate()["val_loss"]
    state = trainer.train()
    assert state["best_val"] < before - 0.05
    sim = GPT2UserSimulator.from_pretrained(tmp_path)
    assert sim.extra["training"]["best_val_loss"] == pytest.approx(state["best_val"])


def test_loss_ignores_the_recommenders_tokens(tiny_sim_dir):
    sim = GPT2UserSimulator.from_pretrained(tiny_sim_dir)
    batch = session_batch(
        sim,
        sim.population[0],
        [np.array([1, 2, 3]), np.array([4, 5, 6])],
        [np.array([0, 1, 0]), np.array([2, 0, 0])],
    )
    kinds = batch["target_kind"][0]
    nxt = batch["input_ids"][0][1:]
    targets = nxt[kinds[:-1] > 0]
    assert set(targets.tolist()) <= set(sim.tokenizer.output_tokens)
    assert int((kinds == 1).sum()) == 6 and int((kinds == 2).sum()) == 1


def test_weight_average_is_validated_saved_and_resumed(tiny_logs_dir, tmp_path):
    cfg = _tiny_config(max_steps=12, eval_every=4, warmup_steps=2, ema_decay=0.8)
    logs, sim_cfg = read_logs(tiny_logs_dir), SimulatorConfig(context_length=128)
    full = SimulatorTrainer(logs, tmp_path / "full", cfg, sim_cfg, progress=False)
    state = full.train()
    # the saved simulator is the average at the best step, not the trained weights
    averaged = full.average
    assert averaged is not None
    trained = [p.detach().clone() for p in averaged.params]
    assert not all(torch.equal(a, t) for a, t in zip(averaged.averages, trained))
    with averaged.swapped():
        assert full.validate()["val_loss"] == pytest.approx(state["history"][-1]["val_loss"])
    assert full.validate()["val_loss"] != pytest.approx(state["history"][-1]["val_loss"])
    assert state["best_step"] == state["step"]  # still improving: the last one is saved
    saved = GPT2UserSimulator.from_pretrained(tmp_path / "full").model.state_dict()
    named = dict(full.model.named_parameters())
    for name, avg in zip(named, averaged.averages, strict=True):
        torch.testing.assert_close(saved[name], avg)
    # validation after the average is swapped back sees the trained weights again
    for p, t in zip(averaged.params, trained):
        assert torch.equal(p, t)
    # an interrupted run resumes with its average: the same validation losses
    cut = SimulatorTrainer(logs, tmp_path / "cut", cfg, sim_cfg, progress=False)
    cut.train(stop_after_steps=6)
    resumed = SimulatorTrainer(logs, tmp_path / "cut", cfg, sim_cfg, progress=False).train(
        resume=True
    )
    assert [h["val_loss"] for h in resumed["history"]] == pytest.approx(
        [h["val_loss"] for h in state["history"]], abs=1e-6
    )
    with pytest.raises(ValueError, match=r"ema_decay must be in \(0, 1\)"):
        TrainConfig(ema_decay=1.0)
