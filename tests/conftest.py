"""Tiny shared fixtures: a small world, its logs and a tiny trained GPT-2 simulator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from recsim_env.config import EnvConfig
from recsim_env.log_generation import generate
from simulators.lm.model import SimulatorConfig
from simulators.logs import write_logs
from simulators.parametric import ParametricUserModel, WorldConfig
from simulators.training import SimulatorTrainer, TrainConfig

torch.set_num_threads(1)

# Property tests draw the same examples on every run, so a red CI run is reproducible and never
# a coin toss; `HYPOTHESIS_PROFILE=explore python -m pytest` searches fresh examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TINY_WORLD = WorldConfig(num_items=50, num_topics=5, population_size=200, seed=3)
TINY_ENV = EnvConfig(slate_size=3, num_candidates=8, history_length=4, max_episode_steps=12)


@pytest.fixture(scope="session")
def tiny_world() -> ParametricUserModel:
    """A 50-item, 5-topic ground-truth world."""
    return ParametricUserModel(TINY_WORLD)


@pytest.fixture(scope="session")
def tiny_logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logs of 120 users of the tiny world (random policy)."""
    world = ParametricUserModel(TINY_WORLD)
    logs = generate(120, "random", 0, TINY_ENV, world)
    return write_logs(logs, tmp_path_factory.mktemp("logs"))


def train_tiny(logs_dir: Path, out: Path, sim_config: SimulatorConfig, **train: object) -> Path:
    """Train a tiny GPT-2 simulator (2 layers, 32 dims) for 8 steps on logs (`train`: other
    TrainConfig fields)."""
    from simulators.logs import read_logs

    cfg = TrainConfig(
        size="tiny", max_steps=8, eval_every=4, batch_size=4, context_length=128, lr=3e-3, **train
    )
    SimulatorTrainer(read_logs(logs_dir), out, cfg, sim_config, progress=False).train()
    return out


@pytest.fixture(scope="session")
def tiny_sim_dir(tiny_logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 simulator (full attention) briefly trained on the tiny logs."""
    return train_tiny(
        tiny_logs_dir,
        tmp_path_factory.mktemp("sim"),
        SimulatorConfig(context_length=128, window_steps=3),
    )


@pytest.fixture(scope="session")
def tiny_recency_sim_dir(tiny_logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny simulator with recency attention over a 2-step window (a ring of 3 steps)."""
    return train_tiny(
        tiny_logs_dir,
        tmp_path_factory.mktemp("recency_sim"),
        SimulatorConfig(context_length=128, window_steps=3, attention_window_steps=2),
    )


def _with_random_summary(src: Path, out: Path) -> Path:
    """A copy of a simulator checkpoint with the session-summary channel on and random summary
    weights (a trained-from-zero channel would hide a wrong code: every code embeds to 0)."""
    from dataclasses import replace

    from simulators.gpt2_user import GPT2UserSimulator

    sim = GPT2UserSimulator.from_pretrained(src)
    model = sim.model
    model.sim_config = replace(model.sim_config, session_summary=True)
    model.add_session_summary(torch.from_numpy(sim.item_category))
    with torch.no_grad():
        model.summary_emb.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
        model.summary_emb.weight[0].zero_()
    GPT2UserSimulator(
        model, sim.tokenizer, sim.profile_encoder, sim.population, sim.items, sim.extra
    ).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_summary_sim_dir(tiny_sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny full-attention simulator with a (random) session-summary channel."""
    return _with_random_summary(tiny_sim_dir, tmp_path_factory.mktemp("summary_sim"))


@pytest.fixture(scope="session")
def tiny_recency_summary_sim_dir(
    tiny_recency_sim_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny recency-attention simulator with a (random) session-summary channel."""
    return _with_random_summary(tiny_recency_sim_dir, tmp_path_factory.mktemp("rsummary_sim"))


def session_batch(sim, profile, slates, responses) -> dict:
    """One whole session (forced responses, no leave) as a packed batch of one row."""
    from simulators.training.data import collate, pack_rows, session_windows

    enc = sim.tokenizer.encode_session(
        profile, slates, responses, False, sim.model.item_known.numpy(), sim.item_category
    )
    t = len(enc.input_ids)
    return collate(pack_rows(session_windows(enc, t, 1, sim.prefix_length), t, np.arange(1)))
