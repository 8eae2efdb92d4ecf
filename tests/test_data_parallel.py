"""Data-parallel fine-tuning: 2 CPU processes (gloo) train the model one process trains.

The README's launch (`accelerate launch --multi_gpu ...`, gloo on CPUs) runs 4 steps; a resume
from that 2-process checkpoint runs to 8. Both keep a weight average (`--ema-decay`). The launch takes 15-30 s on the 2 shared cores, most of
it importing torch and the project in both ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

from simulators.lm.model import SimulatorConfig
from simulators.logs import read_logs
from simulators.training import SimulatorTrainer, TrainConfig
from simulators.training.parallel import DATA_PARALLEL_COMMANDS

ARGS = ["--size", "tiny", "--eval-every", "4", "--batch-size", "4", "--context-length", "128"]
ARGS += ["--seed", "2", "--attention-window", "0", "--ema-decay", "0.8"]
TOLERANCE = 1e-6
"""Validation loss of 2 processes vs 1 after the same steps (float summation order differs)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher: list[str], logs: Path, out: Path, *extra: str) -> None:
    cmd = [*launcher, "-m", "recsim_env.cli", "train-sim", "--logs", str(logs), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, *ARGS, *extra], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _state(out: Path) -> dict:
    with safe_open(str(out / "training" / "state.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["state"])


@pytest.mark.slow
def test_two_cpu_processes_train_the_one_process_model_and_resume(tiny_logs_dir, tmp_path):
    cfg = TrainConfig(
        size="tiny",
        max_steps=8,
        eval_every=4,
        batch_size=4,
        context_length=128,
        seed=2,
        ema_decay=0.8,  # the weight average, too, is the same in every rank
    )
    one = tmp_path / "one"
    SimulatorTrainer(
        read_logs(tiny_logs_dir), one, cfg, SimulatorConfig(context_length=128), progress=False
    ).train()
    two = tmp_path / "two"
    accelerate = shutil.which("accelerate") or pytest.skip("no accelerate command")
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port())]
    _launch(launch, tiny_logs_dir, two, "--max-steps", "4", "--json", str(tmp_path / "two.json"))
    assert json.loads((tmp_path / "two.json").read_text())["processes"] == 2
    assert _state(two)["step"] == 4
    # resume the 2-process checkpoint (here in one process: warm-up is 100 steps, so the learning
    # rate of steps 0-7 does not depend on the total, and 4 + 4 steps equal 8)
    trainer = SimulatorTrainer(
        read_logs(tiny_logs_dir), two, cfg, SimulatorConfig(context_length=128), progress=False
    )
    trainer.train(resume=True)
    a, b = _state(one), _state(two)
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]] == [4, 8]
    for ha, hb in zip(a["history"], b["history"]):
        assert abs(ha["val_loss"] - hb["val_loss"]) <= TOLERANCE, (ha, hb)
    # only the main process wrote: one TensorBoard file from the launch, one from the resume
    assert len(list((two / "training" / "tb").glob("events.out.tfevents.*"))) == 2


def test_accelerate_cpu_launch_that_runs_one_process_is_refused(
    tiny_logs_dir, tmp_path, monkeypatch
):
    # what `accelerate launch --num_processes 2` leaves in the environment without GPUs
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = TrainConfig(size="tiny", max_steps=1, batch_size=4, context_length=128)
    with pytest.raises(ValueError, match="started 1 process") as err:
        SimulatorTrainer(read_logs(tiny_logs_dir), tmp_path / "x", cfg, progress=False)
    assert DATA_PARALLEL_COMMANDS in str(err.value)
    assert not (tmp_path / "x").exists()


@pytest.mark.gpu
def test_two_gpus_train_the_one_gpu_model(tiny_logs_dir, tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    one, two = tmp_path / "one", tmp_path / "two"
    accelerate = shutil.which("accelerate") or pytest.skip("no accelerate command")
    for out, n in ((one, "1"), (two, "2")):
        launch = [accelerate, "launch", "--num_processes", n, "--num_machines", "1"]
        launch += ["--multi_gpu"] if n == "2" else []
        launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--main_process_port", str(_free_port())]
        _launch(launch, tiny_logs_dir, out, "--max-steps", "8")
    a, b = _state(one), _state(two)
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert abs(ha["val_loss"] - hb["val_loss"]) <= 1e-4, (ha, hb)  # TF32 / NCCL order
