"""Outputs survive interruptions whole, one writer at a time, and nothing is unpickled unasked."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recsim_env.cli import main
from simulators.gpt2_user import GPT2UserSimulator
from simulators.gpt2_user.checkpoint import commit_pending, save_simulator
from simulators.logs import read_logs

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env
    )


def test_a_killed_import_leaves_the_earlier_log_set(tmp_path) -> None:
    out = tmp_path / "logs"
    assert main(["generate-logs", "--quiet", "--users", "5", "--seed", "1", "--out", str(out)]) == 0
    before = read_logs(out).steps.copy()
    # a second write of other logs, killed (os._exit: no cleanup at all) half-way through
    proc = _python(
        f"""
        import os
        import simulators.logs as logs
        from recsim_env.config import EnvConfig
        from recsim_env.log_generation import generate
        from simulators.parametric import ParametricUserModel
        real = logs.pq.write_table
        def die_after_steps(table, path, *a, **k):
            real(table, path, *a, **k)
            os._exit(9)
        logs.pq.write_table = die_after_steps
        new = generate(7, "random", 2, EnvConfig(), ParametricUserModel())
        logs.write_logs(new, {str(out)!r})
        """
    )
    assert proc.returncode == 9, proc.stderr
    after = read_logs(out)
    assert after.steps.equals(before)  # the earlier complete set, not a mixture
    assert len(list(tmp_path.glob(".logs.*.tmp"))) == 1  # the killed writer's staging folder
    # the next write removes that leftover, cleans nothing it should not, replaces the set whole
    old_umask = os.umask(0o022)
    try:
        argv = ["generate-logs", "--quiet", "--users", "7", "--seed", "2", "--out", str(out)]
        assert main(argv) == 0
    finally:
        os.umask(old_umask)
    assert read_logs(out).steps["user_id"].nunique() == 7
    assert not list(tmp_path.glob(".logs.*.tmp"))
    assert out.stat().st_mode & 0o777 == 0o755  # a plain folder's mode, not mkdtemp's 0700


def test_a_second_writer_of_the_same_output_fails_at_once(tmp_path, tiny_logs_dir, capsys) -> None:
    out = tmp_path / "sim"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom simulators.atomic import exclusive_output\n"
            f"with exclusive_output({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        args = [
            "train-sim",
            "--quiet",
            "--logs",
            str(tiny_logs_dir),
            "--out",
            str(out),
            "--size",
            "tiny",
            "--max-steps",
            "1",
        ]
        assert main(args) == 2
        assert "is writing this output right now" in capsys.readouterr().err
        gen = ["generate-logs", "--quiet", "--users", "2", "--out", str(out)]
        assert main(gen) == 2
    finally:
        holder.kill()
        holder.wait()
    # the killed holder's lock file stays; the next writer takes it and removes it when done
    assert (tmp_path / ".sim.lock").exists()
    assert main(["generate-logs", "--quiet", "--users", "2", "--out", str(out)]) == 0
    assert not (tmp_path / ".sim.lock").exists()


def test_a_lock_file_removed_before_it_was_locked_is_not_trusted(tmp_path, monkeypatch) -> None:
    import fcntl

    from simulators.atomic import exclusive_output, lock_path

    out = tmp_path / "out"
    real_flock, calls = fcntl.flock, []

    def flock_after_the_holder_left(fd, op):
        if not calls:  # the earlier holder removes the file between our open and our lock
            os.unlink(lock_path(out))
        calls.append(fd)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_holder_left)
    with exclusive_output(out):
        assert len(calls) == 2  # locked the removed file, noticed, locked the new one
        assert lock_path(out).exists()
        assert os.path.samestat(os.fstat(calls[1]), os.stat(lock_path(out)))
    assert not lock_path(out).exists()


def test_an_interrupted_checkpoint_save_reads_whole(tmp_path, tiny_sim_dir) -> None:
    old = GPT2UserSimulator.from_pretrained(tiny_sim_dir)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_sim_dir, ckpt)
    new = GPT2UserSimulator.from_pretrained(tiny_sim_dir)
    with __import__("torch").no_grad():
        for p in new.model.parameters():
            p.add_(0.01)

    # interrupted after the manifest was staged, after two of the renames: completed on load
    import simulators.gpt2_user.checkpoint as checkpoint

    real_replace = os.replace
    calls = {"n": 0}

    def crash_after_two(a, b):
        if str(a).endswith(".new"):  # the commit's renames (staging renames .tmp files)
            calls["n"] += 1
            if calls["n"] > 2:
                raise KeyboardInterrupt  # a kill between renames
        real_replace(a, b)

    checkpoint.os.replace = crash_after_two  # type: ignore[attr-defined]
    try:
        with pytest.raises(KeyboardInterrupt):
            save_simulator(new, ckpt)
    finally:
        checkpoint.os.replace = real_replace  # type: ignore[attr-defined]
    loaded = GPT2UserSimulator.from_pretrained(ckpt)
    for a, b in zip(loaded.model.state_dict().values(), new.model.state_dict().values()):
        assert np.allclose(a.numpy(), b.numpy())
    assert not commit_pending(ckpt)  # nothing left pending

    # interrupted before the manifest was staged: the earlier checkpoint is untouched
    shutil.rmtree(ckpt)
    shutil.copytree(tiny_sim_dir, ckpt)
    (ckpt / "model.safetensors.new").write_bytes(b"half a file")
    loaded = GPT2UserSimulator.from_pretrained(ckpt)
    for a, b in zip(loaded.model.state_dict().values(), old.model.state_dict().values()):
        assert np.allclose(a.numpy(), b.numpy())


def test_resume_refuses_other_settings_and_names_them(tmp_path, tiny_logs_dir, capsys) -> None:
    out = tmp_path / "run"
    base = [
        "train-sim",
        "--quiet",
        "--logs",
        str(tiny_logs_dir),
        "--out",
        str(out),
        "--size",
        "tiny",
        "--context-length",
        "128",
        "--eval-every",
        "1",
    ]
    assert main([*base, "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--max-steps", "2", "--resume", "--lr", "0.01"]) == 2
    assert "lr: saved 0.002, now 0.01" in capsys.readouterr().err
    assert main([*base, "--max-steps", "2", "--resume", "--size", "small"]) == 2
    assert "size: saved 'tiny', now 'small'" in capsys.readouterr().err
    assert main([*base, "--max-steps", "2", "--resume", "--dropout", "0.1"]) == 2
    assert "dropout: saved 0.0, now 0.1" in capsys.readouterr().err
    assert main([*base, "--max-steps", "2", "--resume"]) == 0  # only the budget changed
    # a run saved before a setting existed resumes: the missing setting counts as its default
    from safetensors import safe_open
    from safetensors.torch import save_file

    state = out / "training" / "state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["train_config"])
    del cfg["dropout"], cfg["item_dropout"]
    save_file(tensors, str(state), metadata={**meta, "train_config": json.dumps(cfg)})
    assert main([*base, "--max-steps", "3", "--resume"]) == 0


def _payload_zip(path: Path, marker: Path) -> None:
    """An SB3-shaped zip whose `data` unpickles into `open(marker, 'w')`."""
    import pickle

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    blob = base64.b64encode(pickle.dumps(Planted())).decode()
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": blob}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data", json.dumps(data))


def test_a_planted_payload_is_never_unpickled_without_the_flag(tmp_path, capsys) -> None:
    marker = tmp_path / "PWNED"
    _payload_zip(tmp_path / "thompsn.zip", marker)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a typo next to a planted file
    try:
        bench = ["benchmark", "--quiet", "--env", "ParametricUserSim-v0", "--users", "2"]
        assert main([*bench, "--agents", "thompsn"]) == 2
        assert main([*bench, "--agents", "thompsn.zip"]) == 2
        assert main([*bench, "--agents", f"ppo:{tmp_path / 'thompsn.zip'}"]) == 2
        assert "trust-sb3-zip" in capsys.readouterr().err
        val = ["validate", "--quiet", "--users", "5", "--world", "none"]
        assert main([*val, "--ppo", f"ppo:{tmp_path / 'thompsn.zip'}"]) == 2
        assert main([*val, "--policies", "random,thompsn"]) == 2
        assert main([*val, "--no-ranking", "--policies", "thompsn"]) == 2  # not silently ignored
    finally:
        os.chdir(cwd)
    assert not marker.exists()


def test_output_paths_that_cannot_take_the_file_are_refused_before_any_work(
    tmp_path, capsys
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    run = ["benchmark", "--users", "2", "--agents", "random", "--quiet", "--json"]
    assert main([*run, str(fifo)]) == 2
    assert "fifo is not a regular file (a device, FIFO or socket)" in capsys.readouterr().err
    assert fifo.is_fifo()  # not replaced
    assert main([*run, "/proc/llm-usersim-none/x.json"]) == 2
    assert "/proc takes no new file" in capsys.readouterr().err
    assert main(["train-sim", "--logs", str(tmp_path), "--out", "/proc/llm-usersim-none"]) == 2
    assert "/proc takes no new file" in capsys.readouterr().err
    assert not list(tmp_path.glob(".llm-usersim-probe.*"))


def test_a_symlinked_output_is_written_through_and_the_link_kept(tmp_path) -> None:
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("earlier")
    link.symlink_to(target)
    argv = ["benchmark", "--users", "2", "--agents", "random", "--quiet", "--json", str(link)]
    assert main(argv) == 0
    assert link.is_symlink() and "random" in json.loads(target.read_text())["agents"]
