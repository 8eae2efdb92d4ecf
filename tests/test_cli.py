import json
import re
import subprocess
import sys
from pathlib import Path

import torch

from recsim_env.cli import main


def test_generate_logs_writes_a_readable_log_set(tmp_path, capsys):
    assert main(["generate-logs", "--users", "20", "--seed", "3", "--out", str(tmp_path)]) == 0
    assert "click_rate" in capsys.readouterr().out
    from simulators.logs import read_logs

    assert len(read_logs(tmp_path).users) == 20


def _cli(*argv: str) -> subprocess.CompletedProcess:
    """Run `python -m recsim_env.cli ARGV` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "recsim_env.cli", *argv], capture_output=True, text=True
    )


def test_bad_input_is_one_line_on_stderr_and_exit_2(tmp_path):
    missing = ["train-sim", "--logs", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    proc = _cli(*missing)  # refused while parsing, before any work
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "argument --logs" in proc.stderr and "no such directory" in proc.stderr
    bad = ["train-sim", "--logs", str(tmp_path), "--out", str(tmp_path / "o")]
    proc = _cli(*bad)  # refused when read
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "not a log directory" in proc.stderr
    debug = _cli("--debug", *bad)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_misspelt_flag_is_refused_with_the_closest_one(tmp_path, capsys):
    where = ["--logs", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(["train-sim", *where, "--ema-decy", "0.9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-usersim train-sim: error: unrecognized arguments: --ema-decy 0.9")
    assert "did you mean --ema-decay?" in err and err.count("\n") == 1
    assert main(["benchmark", "--usres=3", "surplus"]) == 2
    err = capsys.readouterr().err
    assert "--usres=3 surplus (--usres: did you mean --users?)" in err


def test_train_sim_cli_writes_checkpoint_and_json(tiny_logs_dir, tmp_path, capsys):
    out = tmp_path / "ck"
    assert (
        main(
            [
                "train-sim",
                "--logs",
                str(tiny_logs_dir),
                "--out",
                str(out),
                "--size",
                "tiny",
                "--max-steps",
                "4",
                "--eval-every",
                "2",
                "--batch-size",
                "2",
                "--context-length",
                "128",
                "--json",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "t.json").read_text())
    assert summary["steps"] == 4 and summary["best_val_loss"] > 0
    assert summary["stop_reason"] == "4 optimiser steps (--max-steps)"
    assert (out / "model.safetensors").exists() and (out / "training" / "tb").is_dir()
    assert "replaces it" not in capsys.readouterr().err
    again = [*"--size tiny --max-steps 1 --batch-size 2 --context-length 128".split()]
    assert main(["train-sim", "--logs", str(tiny_logs_dir), "--out", str(out), *again]) == 0
    err = capsys.readouterr().err  # a second run into the same folder says what it does
    assert f"{out} holds a trained simulator; this run trains afresh and replaces it" in err
    assert len(list((out / "training" / "tb").glob("events.out.tfevents.*"))) == 1
    epochs = ["--size", "tiny", "--epochs", "1", "--batch-size", "2", "--context-length", "128"]
    assert (
        main(["train-sim", "--logs", str(tiny_logs_dir), "--out", str(tmp_path / "e"), *epochs])
        == 0
    )
    assert "stopped after 1 pass over the data (--epochs), " in capsys.readouterr().out


def test_train_sim_continues_from_a_checkpoint_and_rejects_another_catalog(
    tiny_logs_dir, tiny_sim_dir, tmp_path
):
    from recsim_env.log_generation import generate
    from simulators.gpt2_user import GPT2UserSimulator
    from simulators.logs import write_logs
    from simulators.parametric import ParametricUserModel, WorldConfig
    from tests.conftest import TINY_ENV

    out = tmp_path / "more"
    args = [*"--max-steps 2 --eval-every 1 --batch-size 2 --json".split(), str(tmp_path / "s.json")]
    more = ["train-sim", "--logs", str(tiny_logs_dir), "--out", str(out)]
    assert main([*more, "--init-sim", str(tiny_sim_dir), *args]) == 0
    start = GPT2UserSimulator.from_pretrained(tiny_sim_dir)
    more = GPT2UserSimulator.from_pretrained(out)
    assert more.sim_config == start.sim_config  # the checkpoint's settings, not the flags'
    assert more.model.backbone.hidden_size == start.model.backbone.hidden_size
    changed = [
        k
        for k, v in start.model.state_dict().items()
        if not torch.equal(v, more.model.state_dict()[k])
    ]
    assert changed  # it trained on
    other = ParametricUserModel(WorldConfig(num_items=40, num_topics=5, population_size=50, seed=9))
    other_dir = write_logs(generate(30, "random", 0, TINY_ENV, other), tmp_path / "other")
    bad = ["train-sim", "--logs", str(other_dir), "--out", str(tmp_path / "x")]
    proc = _cli(*bad, "--init-sim", str(tiny_sim_dir), *args)
    assert proc.returncode == 2 and "--init-sim" in proc.stderr and "items" in proc.stderr


def test_common_options_before_the_command_say_where_they_go(capsys):
    for argv, flag in (
        (["--quiet", "benchmark"], "--quiet"),
        (["--threads", "2", "benchmark"], "--threads"),
        (["--debug", "--threads=2", "benchmark"], "--threads"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{flag} goes after the command: llm-usersim benchmark {flag}" in err, err


def test_a_reader_that_goes_away_stops_the_command_quietly(tmp_path):
    """`llm-usersim import ... | head -0`: no BrokenPipeError traceback, the shell's 141."""
    fixture = Path(__file__).parent / "fixtures" / "movielens"
    argv = ["import", "movielens", str(fixture), "--out", str(tmp_path / "logs")]
    cmd = [sys.executable, "-m", "recsim_env.cli", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the interpreter has even started: every print meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err
    assert (tmp_path / "logs" / "meta.json").is_file()  # the work itself was done


def test_help_shows_each_default_once_and_zero_too(capsys):
    for command in ("import", "generate-logs", "train-sim", "validate", "benchmark", "explain"):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert not re.search(r"\(default[^)]*\) \(default: ", text), command  # said twice
        assert "default: (" not in text, command  # a tuple's repr
    assert main(["benchmark", "--help"]) == 0
    assert "user i is seeded with seed + i (default: 0)" in " ".join(
        capsys.readouterr().out.split()
    )
