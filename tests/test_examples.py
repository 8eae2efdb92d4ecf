import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "train_ppo.py": "mean return",
    "custom_agent.py": "more_of_the_same - random",
    "finetune_simulator.py": "step 0:",
    "real_data_movielens.py": "click_auc:",
    "cleanrl_ppo.py": "iteration 4/4: 256 user-steps",
    "torchrl_ppo.py": "batch 1: 128 user-steps",
    "generic_rl_benchmark.py": "ppo: mean return",
    "pretrain_base.py": "saved base to",
}
if importlib.util.find_spec("ray") is not None:  # the optional extra [ray]
    EXAMPLES["rllib_ppo.py"] = "env steps/s per env runner"
if importlib.util.find_spec("opacus") is not None:  # the optional extra [dp]
    EXAMPLES["dp_privacy_utility.py"] = "| inf | - |"
SMOKE_SECONDS = 600
"""For all the smoke runs together (they run at once; a loaded 2-core machine needs minutes)."""
WITHOUT_OUT = {"custom_agent.py", "cleanrl_ppo.py", "torchrl_ppo.py", "generic_rl_benchmark.py"}
"""Examples that write nothing (no --out)."""


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Run every example with --smoke, all at once (each mostly waits on imports)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = {}
    for script in EXAMPLES:
        cwd = tmp_path_factory.mktemp(script.removesuffix(".py"))
        args = [sys.executable, str(ROOT / "examples" / script), "--smoke"]
        if script not in WITHOUT_OUT:
            args += ["--out", str(cwd / "out")]
        procs[script] = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    results = {}
    deadline = time.monotonic() + SMOKE_SECONDS
    for script, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # that example fails; the others keep their results
            proc.kill()
            out, err = proc.communicate()
            err += f"\n{script} --smoke did not finish within {SMOKE_SECONDS} s (all at once)"
        results[script] = (proc.returncode, out, err)
    return results


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_with_smoke(script, smoke_runs):
    code, out, err = smoke_runs[script]
    assert code == 0, err[-3000:]
    assert EXAMPLES[script] in out


@pytest.mark.skipif(
    importlib.util.find_spec("tianshou") is None,
    reason="tianshou is an optional extra (pip install '.[tianshou]'; it pins pandas < 3)",
)
def test_tianshou_example_runs_with_smoke(tmp_path):
    out = _run_example("tianshou_ppo.py", tmp_path, "--smoke")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mean return" in out.stdout


def test_sac_with_item_popularity_runs_with_smoke(tmp_path):
    args = ["--smoke", "--algos", "sac", "--item-popularity"]
    out = _run_example("generic_rl_benchmark.py", tmp_path, *args, "--json", "f.json")
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["item_popularity"] is True
    assert figures["algos"]["sac"]["action_mode"] == "weights"
    assert figures["algos"]["sac"]["mean_return"] > 0
    typo = _run_example("generic_rl_benchmark.py", tmp_path, "--sac-action-mode", "popularity")
    assert typo.returncode != 0 and "allowed: weights, scores" in typo.stderr


def _run_example(script: str, cwd, *args: str) -> subprocess.CompletedProcess:
    """Run examples/SCRIPT ARGS in cwd, one thread, with the repository importable."""
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
