"""Generated bad input: every command answers with exit 0 or 2, never a traceback, never a
partial output (issue: hardening)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsim_env.cli import main
from simulators.logs import read_logs

VALUES = [
    "0",
    "-1",
    "1",
    "2",
    "nan",
    "inf",
    "-inf",
    "1e30",
    "abc",
    "",
    " ",
    "3.5",
    "cuda",
    "cpu",
    "{bad",
    "[1]",
    '{"slate_size": "5"}',
    '{"bogus": 1}',
    "ppo:nowhere",
    "thompsn",
    "random,,greedy",
    "AFILE",
    "ADIR",
    "MISSING",
    "AFILE/sub",
]
FLAGS = {
    "benchmark": [
        "--users",
        "--seed",
        "--batch",
        "--agents",
        "--json",
        "--csv",
        "--plot",
        "--logs",
        "--log-users",
        "--simulator",
        "--device",
        "--threads",
    ],
    "validate": [
        "--users",
        "--seed",
        "--sim",
        "--logs",
        "--world",
        "--pool",
        "--device",
        "--policies",
        "--ppo",
        "--json",
        "--report",
        "--ppo-steps",
    ],
    "train-agent": [
        "--steps",
        "--num-envs",
        "--gamma",
        "--ent-coef",
        "--lr",
        "--n-steps",
        "--hyperparams",
        "--env-kwargs",
        "--sim",
        "--device",
        "--eval-users",
        "--out",
    ],
    "train-sim": [
        "--max-steps",
        "--lr",
        "--weight-decay",
        "--dropout",
        "--item-dropout",
        "--ema-decay",
        "--batch-size",
        "--val-fraction",
        "--context-length",
        "--attention-window",
        "--base-model",
        "--init-sim",
        "--json",
        "--epochs",
        "--lora-rank",
        "--lora-alpha",
    ],
    "generate-logs": [
        "--users",
        "--seed",
        "--slate-size",
        "--num-candidates",
        "--max-steps",
        "--batch",
        "--world-seed",
        "--out",
    ],
    "speed": [
        "--num-envs",
        "--histories",
        "--sweep-num-envs",
        "--device",
        "--json",
        "--sim",
        "--slate-size",
    ],
    "soak": ["--steps", "--num-envs", "--samples", "--env", "--sim", "--json", "--device"],
}


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "AFILE").write_text("x")
    (d / "ADIR").mkdir()
    return d


def _resolve(value: str, d: Path) -> str:
    for token in ("AFILE", "ADIR", "MISSING"):
        value = value.replace(token, str(d / token))
    return value


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    command=st.sampled_from(sorted(FLAGS)),
    picks=st.lists(st.tuples(st.integers(0, 50), st.sampled_from(VALUES)), min_size=1, max_size=3),
)
def test_generated_bad_arguments_exit_0_or_2_in_one_line(sandbox, command, picks) -> None:
    flags = FLAGS[command]
    argv = [command, "--quiet"]
    # keep whatever does run small and quick
    small = {
        "benchmark": ["--env", "ParametricUserSim-v0", "--users", "2", "--agents", "random"],
        "validate": ["--users", "5", "--no-ranking", "--world", "none", "--sim", "MISSING"],
        "train-agent": [
            "--env",
            "ParametricUserSim-v0",
            "--steps",
            "4",
            "--out",
            "ADIR/ta",
            "--eval-users",
            "0",
        ],
        "train-sim": ["--logs", "MISSING", "--out", "ADIR/ts"],
        "generate-logs": ["--users", "2", "--out", "ADIR/g"],
        "speed": ["--smoke", "--sim", "MISSING"],
        "soak": ["--steps", "1", "--sim", "MISSING"],
    }[command]
    argv += [_resolve(v, sandbox) for v in small]
    bad = False
    for index, value in picks:
        argv += [flags[index % len(flags)], _resolve(value, sandbox)]
        bad = True
    # a relative value (e.g. "cpu" picked for --out) must land in the sandbox, not the checkout
    cwd = os.getcwd()
    os.chdir(sandbox)
    try:
        rc, err = _run(argv)
    finally:
        os.chdir(cwd)
    assert rc in (0, 2), (argv, rc, err)
    if rc == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in err, (argv, err)
    assert bad


def _good_tables(tmp: Path) -> Path:
    src = tmp / "good"
    if not src.exists():
        assert (
            main(
                ["generate-logs", "--quiet", "--users", "6", "--out", str(src), "--max-steps", "4"]
            )
            == 0
        )
    return src


MUTATIONS = {
    "step": [None, -1, 99, "3", 1.5],
    "leave": [None, 1, "yes"],
    "user_id": [None, "", "stranger", 7],
    "session_id": [None, "", "other"],
}


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    column=st.sampled_from(sorted(MUTATIONS)),
    row=st.integers(0, 10),
    pick=st.integers(0, 10),
)
def test_generated_malformed_logs_are_refused_cleanly(tmp_path_factory, column, row, pick) -> None:
    base = tmp_path_factory.getbasetemp() / "malformed"
    base.mkdir(exist_ok=True)
    src = _good_tables(base)
    bad = base / "bad"
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(src, bad)
    table = pq.read_table(bad / "steps.parquet").to_pandas()
    values = MUTATIONS[column]
    r = row % len(table)
    col = table[column].astype(object).tolist()
    col[r] = values[pick % len(values)]
    table[column] = col
    try:
        arrow = pa.Table.from_pandas(table, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: the column becomes strings
        table[column] = [None if v is None else str(v) for v in col]
        arrow = pa.Table.from_pandas(table, preserve_index=False)
    pq.write_table(arrow, bad / "steps.parquet")
    out = base / "sim"
    shutil.rmtree(out, ignore_errors=True)
    rc, err = _run(
        [
            "train-sim",
            "--quiet",
            "--logs",
            str(bad),
            "--out",
            str(out),
            "--size",
            "tiny",
            "--max-steps",
            "1",
            "--context-length",
            "256",
        ]
    )
    assert rc in (0, 2), err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "steps.parquet" in err or "meta.json" in err
        assert not out.exists()  # nothing written for a refused input
    else:
        read_logs(bad)  # what trained must be a valid log set
        assert (out / "simulator_config.json").is_file()
    assert np.isfinite(1.0)
