"""Crash and resume: SIGKILL mid-run, --resume, same validation loss as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors import safe_open

ARGS = [
    "--size",
    "tiny",
    "--max-steps",
    "60",
    "--eval-every",
    "5",
    "--batch-size",
    "2",
    "--context-length",
    "128",
    "--seed",
    "4",
]


def _train(logs, out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "recsim_env.cli",
        "train-sim",
        "--logs",
        str(logs),
        "--out",
        str(out),
        *ARGS,
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _state(out):
    with safe_open(str(out / "training" / "state.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["state"])


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tiny_logs_dir, tmp_path):
    full = tmp_path / "full"
    assert _train(tiny_logs_dir, full).wait(timeout=300) == 0
    killed = tmp_path / "killed"
    proc = _train(tiny_logs_dir, killed)
    state_file = killed / "training" / "state.safetensors"
    deadline = time.time() + 240
    while time.time() < deadline and not state_file.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = _state(killed)["step"]
    assert 0 < interrupted_at < 60, "the run finished before it could be killed"
    assert _train(tiny_logs_dir, killed, "--resume").wait(timeout=300) == 0
    a, b = _state(full), _state(killed)
    assert b["step"] == a["step"] == 60
    assert abs(a["best_val"] - b["best_val"]) <= 1e-6
    assert [h["val_loss"] for h in a["history"]] == pytest.approx(
        [h["val_loss"] for h in b["history"]], abs=1e-6
    )
