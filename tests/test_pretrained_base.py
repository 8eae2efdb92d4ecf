"""A pretrained base's tokenizer and token embeddings (pretrained text) and LoRA fine-tuning.

Everything runs on a tiny GPT-2 and a tiny byte-level BPE tokenizer, both made and saved here
(no hub).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsim_env.cli import main
from simulators.gpt2_user import GPT2UserSimulator
from simulators.lm.model import packed_loss
from simulators.lm.pretrained_text import load_base_text, pool_texts, profile_texts
from simulators.logs import read_logs
from simulators.training import SimulatorTrainer, TrainConfig
from simulators.training.lora import (
    add_lora,
    has_lora,
    lora_available,
    merged,
    parameter_counts,
    trainable_parameters,
)

needs_peft = pytest.mark.skipif(not lora_available(), reason="LoRA needs the lora extra (peft)")

TRAIN = {"max_steps": 4, "eval_every": 2, "batch_size": 2, "context_length": 128, "lr": 3e-3}


def make_tiny_base(out: Path, words: list[str], seed: int = 0) -> Path:
    """Save a tiny GPT-2 (2 layers, 32 dims) and a byte-level BPE tokenizer trained on `words`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(words, trainer)
    eos = "<|endoftext|>"
    hf = GPT2TokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos)
    hf.save_pretrained(out)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(hf), n_positions=128, n_layer=2, n_head=2, n_embd=32, bos_token_id=0
    )
    config.eos_token_id = 0
    GPT2LMHeadModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_base(tiny_logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 + tokenizer whose BPE was trained on the tiny world's titles and profiles."""
    logs = read_logs(tiny_logs_dir)
    words = logs.items["title"].tolist() + [
        " ".join(str(v) for v in row) for row in logs.users.drop(columns="user_id").values
    ]
    return make_tiny_base(tmp_path_factory.mktemp("base"), words * 5)


@pytest.fixture(scope="module")
def base_trainer(tiny_logs_dir: Path, tiny_base: Path, tmp_path_factory) -> SimulatorTrainer:
    """Full fine-tuning of the tiny base for 4 steps, pretrained text on."""
    out = tmp_path_factory.mktemp("full")
    cfg = TrainConfig(base_model=str(tiny_base), **TRAIN)
    trainer = SimulatorTrainer(read_logs(tiny_logs_dir), out, cfg, progress=False)
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def lora_trainer(tiny_logs_dir: Path, tiny_base: Path, tmp_path_factory) -> SimulatorTrainer:
    """LoRA (rank 2) on the tiny base for 4 steps."""
    out = tmp_path_factory.mktemp("lora")
    cfg = TrainConfig(base_model=str(tiny_base), lora_rank=2, **TRAIN)
    trainer = SimulatorTrainer(read_logs(tiny_logs_dir), out, cfg, progress=False)
    trainer.train()
    return trainer


def _val_batch(trainer: SimulatorTrainer) -> dict[str, torch.Tensor]:
    from simulators.training.data import collate

    return collate(trainer.val_rows[:4])


# ----------------------------------------------------------------------------- pretrained text
def test_pooling_is_the_mean_of_the_base_token_embeddings(tiny_base):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    base = load_base_text(str(tiny_base))
    tok = AutoTokenizer.from_pretrained(str(tiny_base))
    wte = GPT2LMHeadModel.from_pretrained(str(tiny_base)).transformer.wte.weight.detach()
    texts = ["everyday compact jazz collection", "", "premium rock album"]
    pooled = pool_texts(base, texts)
    for text, row in zip(texts, pooled):
        if not text:
            assert torch.equal(row, torch.zeros_like(row))  # nothing known of an empty title
            continue
        ids = tok(" " + text, add_special_tokens=False)["input_ids"]
        assert len(ids) >= 3
        torch.testing.assert_close(row, wte[ids].mean(0), rtol=0, atol=1e-6)


def test_the_trained_network_reads_titles_and_profiles_through_the_base(base_trainer, tiny_base):
    model = base_trainer.model
    channel = model.pretrained_text
    assert channel is not None
    assert base_trainer.sim_config.pretrained_text == str(tiny_base.resolve())
    base = load_base_text(str(tiny_base))
    titles = base_trainer.logs.items["title"].tolist()
    torch.testing.assert_close(channel.item_emb, pool_texts(base, titles))
    tok = base_trainer.data.tokenizer
    texts = profile_texts(tok)
    i = tok.profile_vocab.index(next(t for t in tok.profile_vocab if t.startswith("age_band=")))
    assert texts[tok.profile_base + i] == "age band " + tok.profile_vocab[i].split("=", 1)[1]
    assert texts[0] == "" and not bool(channel.token_emb[0].any())  # specials: nothing
    torch.testing.assert_close(channel.token_emb, pool_texts(base, texts))
    # the projection starts as the identity, and training moved it
    assert not torch.equal(channel.proj.weight, torch.eye(32))


def test_inference_embedding_equals_the_training_embedding(base_trainer):
    from simulators.lm.model import packed_inputs

    model = base_trainer.model.eval()
    tokens, _, _ = packed_inputs(model, _val_batch(base_trainer))
    with torch.no_grad():
        fast = model.embed(tokens)
    with torch.enable_grad():
        slow = model.embed(tokens).detach()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    model.train()


def test_checkpoint_loads_without_the_base_and_new_items_say_why(
    base_trainer, tiny_base, tmp_path, caplog
):
    # the checkpoint was written by training; copy it away from a base that then disappears
    sim = GPT2UserSimulator.from_pretrained(base_trainer.out)
    moved_base = tmp_path / "base"
    shutil.copytree(tiny_base, moved_base)
    model = sim.model
    model.sim_config = model.sim_config.__class__(
        **{**model.sim_config.to_dict(), "pretrained_text": str(moved_base)}
    )
    sim.sim_config = model.sim_config
    sim.save_pretrained(tmp_path / "sim")
    shutil.rmtree(moved_base)
    again = GPT2UserSimulator.from_pretrained(tmp_path / "sim", capacity=2)
    for k, v in sim.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    again.start_sessions(np.arange(2), sim.population[:2])
    probs = again.score_slates(np.arange(2), np.array([[0, 1, 2], [3, 4, 5]]))
    assert np.isfinite(probs).all()
    new = pd.DataFrame({"item_id": ["new1"], "title": ["deluxe jazz album"]})
    with caplog.at_level(logging.WARNING):
        idx = again.add_items(new)
    assert "cannot be read" in caplog.text and "no new item gets" in caplog.text
    assert not bool(again.model.pretrained_text.item_emb[idx[0]].any())


def test_new_items_are_pooled_from_the_base_when_it_is_there(base_trainer, tiny_base, caplog):
    sim = GPT2UserSimulator.from_pretrained(base_trainer.out)
    titles = ["deluxe jazz album", "everyday rock book"]
    with caplog.at_level(logging.WARNING):
        idx = sim.add_items(pd.DataFrame({"item_id": ["n1", "n2"], "title": titles}))
    assert caplog.text == ""
    expect = pool_texts(load_base_text(str(tiny_base)), titles)
    torch.testing.assert_close(sim.model.pretrained_text.item_emb[idx], expect)


def test_new_items_refuse_another_base_at_the_same_path(base_trainer, tiny_logs_dir, tmp_path):
    sim = GPT2UserSimulator.from_pretrained(base_trainer.out)
    other = make_tiny_base(tmp_path / "other", ["something else entirely"] * 20, seed=1)
    from simulators.lm.pretrained_text import new_item_vectors

    titles = sim.items_table()["title"].tolist()
    vec = new_item_vectors(sim.model.pretrained_text, str(other), titles, ["jazz album"])
    assert not bool(vec.any())


def test_no_pretrained_text_leaves_the_channel_off(tiny_logs_dir, tiny_base, tmp_path):
    cfg = TrainConfig(base_model=str(tiny_base), pretrained_text=False, **TRAIN)
    trainer = SimulatorTrainer(read_logs(tiny_logs_dir), tmp_path, cfg, progress=False)
    assert trainer.model.pretrained_text is None and trainer.sim_config.pretrained_text == ""


def test_sentence_encoder_and_base_text_add_up_in_the_title_channel(
    tiny_logs_dir, tiny_base, tmp_path, monkeypatch
):
    import simulators.gpt2_user.build as build
    import simulators.text_encoder as te

    def fake_minilm(texts: list[str]) -> np.ndarray:  # the encoder's shape, without the extra
        return np.random.default_rng(0).normal(size=(len(texts), 384)).astype(np.float32)

    monkeypatch.setattr(build, "embed_minilm", fake_minilm)
    monkeypatch.setattr(te, "minilm_available", lambda: True)
    cfg = TrainConfig(base_model=str(tiny_base), text_encoder="minilm", **{**TRAIN, "max_steps": 2})
    trainer = SimulatorTrainer(read_logs(tiny_logs_dir), tmp_path, cfg, progress=False)
    model = trainer.model.eval()
    assert model.text_proj is not None and model.item_text_emb is not None
    assert model.pretrained_text is not None
    parts = model.item_side_parts()
    with torch.inference_mode():
        words = model.item_text
        hashed = model.word_emb(words).sum(-2) / (words > 0).sum(-1, keepdim=True).clamp(min=1)
        minilm = model.text_proj(model.item_text_emb)
        base = model.pretrained_text.all_items()
    assert bool(minilm.any()) and bool(base.any())
    torch.testing.assert_close(parts["title"], hashed + minilm + base)
    # explain's counterfactual without the title removes all three, the attributes stay
    items = torch.tensor([0, 3])
    with model.without_item_side(items, "title"):
        masked = model.item_side()[items + 1]
    torch.testing.assert_close(masked, parts["attributes"][items], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- LoRA
@needs_peft
def test_lora_trains_adapters_and_the_simulators_own_parts_only(lora_trainer, base_trainer):
    model = lora_trainer.model
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all("lora_" in n for n in names if n.startswith("backbone.lm.transformer.h."))
    assert "backbone.lm.transformer.h.0.attn.c_attn.base_layer.weight" in frozen
    assert "backbone.lm.transformer.wpe.weight" in frozen
    assert "backbone.lm.transformer.ln_f.weight" in frozen
    for own in ("role_emb.weight", "word_emb.weight", "pretrained_text.proj.weight"):
        assert own in names
    assert {"backbone.lm.transformer.wte.weight", "backbone.lm.lm_head.weight"} <= names
    counts = parameter_counts(model)
    # rank 2 on c_attn (32 -> 96), attn c_proj (32 -> 32), c_fc (32 -> 128), mlp c_proj (128 -> 32)
    assert counts["adapters"] == 2 * 2 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    full = parameter_counts(base_trainer.model)
    assert counts["parameters"] == full["parameters"] == full["trainable"]
    blocks = sum(
        p.numel() for n, p in base_trainer.model.named_parameters() if ".transformer.h." in n
    )
    blocks += sum(
        p.numel()
        for n, p in base_trainer.model.named_parameters()
        if n.startswith(("backbone.lm.transformer.wpe", "backbone.lm.transformer.ln_f"))
    )
    assert counts["trainable"] == full["parameters"] - blocks + counts["adapters"]
    # only trainable parameters are in the optimiser
    in_optimiser = [p for g in lora_trainer.optimizer.param_groups for p in g["params"]]
    assert sum(p.numel() for p in in_optimiser) == counts["trainable"]


@needs_peft
def test_adapters_count_in_the_forward_and_merge_exactly(lora_trainer):
    model = lora_trainer.model
    assert has_lora(model)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(bool(p.any()) for p in lora_b)  # training moved B away from its zero start
    batch = _val_batch(lora_trainer)
    loss, *_ = packed_loss(model, batch)
    loss.backward()
    assert all(p.grad is not None for p in lora_b)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():  # validation path (no oneDNN fast path while adapters are in)
        adapted = packed_loss(model, batch)[0]
        copy = merged(model)
        assert not has_lora(copy) and has_lora(model)
        merged_loss = packed_loss(copy.eval(), batch)[0]  # the oneDNN fast path on CPU
        without = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
        for p in lora_b:
            p.zero_()
        base_only = packed_loss(model, batch)[0]
        for n, p in model.named_parameters():
            if n in without:
                p.copy_(without[n])
    torch.testing.assert_close(adapted, loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged_loss, adapted, rtol=1e-5, atol=1e-6)
    assert abs(float(base_only) - float(adapted)) > 1e-6  # the adapters change the outputs


@needs_peft
def test_lora_checkpoint_is_plain_and_loads_without_peft(lora_trainer, base_trainer):
    from safetensors import safe_open

    def keys(d: Path) -> list[str]:
        with safe_open(str(d / "model.safetensors"), framework="pt") as f:
            return sorted(f.keys())

    assert keys(lora_trainer.out) == keys(base_trainer.out)
    code = (
        "import sys; sys.modules['peft'] = None\n"
        "import numpy as np\n"
        "from simulators.gpt2_user import GPT2UserSimulator\n"
        f"sim = GPT2UserSimulator.from_pretrained({str(lora_trainer.out)!r}, capacity=2)\n"
        "sim.start_sessions(np.arange(2), sim.population[:2])\n"
        "p = sim.score_slates(np.arange(2), np.array([[0, 1, 2], [3, 4, 5]]))\n"
        "print(repr(p.ravel().tolist()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    sim = GPT2UserSimulator.from_pretrained(lora_trainer.out, capacity=2)
    sim.start_sessions(np.arange(2), sim.population[:2])
    here = sim.score_slates(np.arange(2), np.array([[0, 1, 2], [3, 4, 5]])).ravel()
    np.testing.assert_allclose(eval(out.stdout.strip().splitlines()[-1]), here, rtol=1e-6)
    # the checkpoint holds the best validation's weights, merged: its loss is the best one
    batch = {k: v for k, v in _val_batch(lora_trainer).items()}
    assert sim.extra["training"]["best_val_loss"] == lora_trainer.state["best_val"]
    with torch.no_grad():
        assert np.isfinite(float(packed_loss(sim.model, batch)[0]))


@needs_peft
def test_lora_resume_reproduces_the_uninterrupted_run(tiny_logs_dir, tiny_base, tmp_path):
    logs = read_logs(tiny_logs_dir)
    # with a weight average of the adapters, merged into the saved checkpoint
    cfg = TrainConfig(base_model=str(tiny_base), lora_rank=2, ema_decay=0.8, **TRAIN)
    whole = SimulatorTrainer(logs, tmp_path / "whole", cfg, progress=False)
    whole.train()
    part = SimulatorTrainer(logs, tmp_path / "part", cfg, progress=False)
    part.train(stop_after_steps=2)  # the state was saved at step 2 (eval_every)
    resumed = SimulatorTrainer(logs, tmp_path / "part", cfg, progress=False)
    resumed.train(resume=True)
    assert resumed.state["step"] == whole.state["step"] == 4
    for (n, a), b in zip(whole.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=n)
    assert resumed.state["best_val"] == pytest.approx(whole.state["best_val"], rel=1e-6)
    assert whole.average is not None and resumed.average is not None
    for a, b in zip(whole.average.averages, resumed.average.averages, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@needs_peft
def test_add_lora_on_a_fresh_model_counts(base_trainer):
    import copy

    model = copy.deepcopy(base_trainer.model)
    before = sum(p.numel() for p in model.parameters())
    add_lora(model, 4, 8)
    layer = model.backbone.lm.transformer.h[0].attn.c_attn
    assert layer.scaling["default"] == 2.0
    assert sum(p.numel() for p in trainable_parameters(model)) < before
    with pytest.raises(ValueError, match="rank must be >= 1"):
        add_lora(copy.deepcopy(base_trainer.model), 0)


# ----------------------------------------------------------------------------- command line
def _cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


@needs_peft
def test_train_sim_lora_end_to_end(tiny_logs_dir, tiny_base, tmp_path, capsys):
    out, js = tmp_path / "sim", tmp_path / "summary.json"
    rc, err = _cli(
        [
            "train-sim",
            "--logs",
            str(tiny_logs_dir),
            "--out",
            str(out),
            "--base-model",
            str(tiny_base),
            "--lora-rank",
            "2",
            "--max-steps",
            "2",
            "--eval-every",
            "2",
            "--batch-size",
            "2",
            "--context-length",
            "128",
            "--json",
            str(js),
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0, err
    summary = json.loads(js.read_text())
    assert summary["lora_rank"] == 2 and summary["pretrained_text"] is True
    assert summary["lora_adapter_parameters"] == 2 * 2 * 512  # 2 layers, rank 2, see above
    assert summary["trainable_parameters"] < summary["parameters"]
    sim = GPT2UserSimulator.from_pretrained(out)
    assert not has_lora(sim.model) and sim.model.pretrained_text is not None


def _bad(tiny_logs_dir, tmp_path, capsys, *extra) -> str:
    argv = ["train-sim", "--logs", str(tiny_logs_dir), "--out", str(tmp_path / "o"), *extra]
    rc, err = _cli(argv, capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o" / "model.safetensors").exists()
    return err


def test_bad_input_is_one_line_and_exit_2(tiny_logs_dir, tiny_base, tmp_path, capsys, monkeypatch):
    from transformers import BertConfig

    bert = tmp_path / "bert"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(bert)
    err = _bad(tiny_logs_dir, tmp_path, capsys, "--base-model", str(bert))
    assert "unsupported base-model architecture 'bert'; supported: gpt2" in err
    err = _bad(tiny_logs_dir, tmp_path, capsys, "--base-model", str(tiny_base), "--lora-rank", "0")
    assert "--lora-rank" in err and ">= 1" in err
    err = _bad(tiny_logs_dir, tmp_path, capsys, "--base-model", str(tiny_base), "--lora-rank", "-3")
    assert "--lora-rank" in err
    err = _bad(tiny_logs_dir, tmp_path, capsys, "--lora-rank", "2")
    assert "--lora-rank needs --base-model" in err
    err = _bad(
        tiny_logs_dir,
        tmp_path,
        capsys,
        "--base-model",
        str(tiny_base),
        "--lora-rank",
        "2",
        "--dp-epsilon",
        "8",
    )
    assert "--dp-epsilon and --lora-rank cannot be combined" in err
    err = _bad(tiny_logs_dir, tmp_path, capsys, "--size", "tiny", "--lora-alpha", "4")
    assert "--lora-alpha" in err
    err = _bad(tiny_logs_dir, tmp_path, capsys, "--size", "tiny", "--no-pretrained-text")
    assert "--no-pretrained-text applies to a --base-model" in err
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_base / name, no_tok / name)
    err = _bad(tiny_logs_dir, tmp_path, capsys, "--base-model", str(no_tok))
    assert "holds no tokenizer files" in err and "--no-pretrained-text" in err
    import simulators.training.lora as lora

    monkeypatch.setattr(lora, "lora_available", lambda: False)
    err = _bad(tiny_logs_dir, tmp_path, capsys, "--base-model", str(tiny_base), "--lora-rank", "2")
    assert "pip install 'llm-usersim[lora]'" in err
