"""Benchmark and validate on Ray: the same JSON as one process, faults, bad clusters.

One local Ray runtime with 2 CPUs serves the module (its start takes 3-4 s); every run starts its
own actors (about 3 s each, importing torch) and kills them at the end.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from evaluation.distributed import ActorPool, DistributedError, RayConfig, Unit, user_shards
from recsim_env.cli import main

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'llm-usersim[ray]'")

FAST_VALIDATE = ["--users", "20", "--policy-users", "8", "--policy-envs", "8"]


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def timeless(doc: Any) -> Any:
    """The document without wall-clock fields (`seconds`), which no two runs share."""
    if isinstance(doc, dict):
        return {k: timeless(v) for k, v in doc.items() if k != "seconds"}
    if isinstance(doc, list):
        return [timeless(v) for v in doc]
    return doc


def kill_on_submit(monkeypatch: pytest.MonkeyPatch, which: Any) -> list[str]:
    """Kill the actor right after it is sent a unit for which which(label, count) is true."""
    killed: list[str] = []
    submit = ActorPool._submit
    seen: dict[str, int] = {}

    def submit_then_kill(pool: ActorPool, unit: Unit, slot: int) -> Any:
        ref = submit(pool, unit, slot)
        seen[unit.label] = seen.get(unit.label, 0) + 1
        if which(unit.label, seen[unit.label]):
            ray.kill(pool.actors[slot], no_restart=True)
            killed.append(unit.label)
        return ref

    monkeypatch.setattr(ActorPool, "_submit", submit_then_kill)
    return killed


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_user_shards_cover_every_user_once() -> None:
    assert user_shards(24, 2) == [(0, 12), (12, 12)]
    assert user_shards(3, 8) == [(0, 1), (1, 1), (2, 1)]
    for users, parts in ((1, 1), (7, 3), (1000, 7)):
        shards = user_shards(users, parts)
        assert [f for f, _ in shards] == [sum(n for _, n in shards[:i]) for i in range(len(shards))]
        assert sum(n for _, n in shards) == users and min(n for _, n in shards) >= 1


def test_bad_addresses_and_settings_are_refused() -> None:
    for address in ("localhost", "host:port", "127.0.0.1:0", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            RayConfig(address=address)
    with pytest.raises(ValueError, match="retries"):
        RayConfig(retries=-1)
    with pytest.raises(ValueError, match="num_cpus"):
        RayConfig(address="auto", num_cpus=2)


def test_benchmark_json_on_ray_equals_one_process_with_an_actor_killed(
    local_ray, monkeypatch, caplog, tmp_path: Path
) -> None:
    argv = ["benchmark", "--env", "ParametricUserSim-v0", "--users", "24", "--seed", "5"]
    argv += ["--batch", "8", "--agents", "random,popular,greedy,linucb"]
    one, distributed = tmp_path / "one.json", tmp_path / "ray.json"
    assert main([*argv, "--json", str(one)]) == 0
    # greedy's first shard: its actor is killed as soon as the unit is sent
    killed = kill_on_submit(monkeypatch, lambda label, n: label == "greedy (users 0-11)" and n == 1)
    assert main([*argv, "--ray", "--json", str(distributed)]) == 0
    assert killed == ["greedy (users 0-11)"]
    assert "running it again on a fresh actor" in caplog.text
    a, b = json.loads(one.read_text()), json.loads(distributed.read_text())
    assert list(b["agents"]) == ["random", "popular", "greedy", "linucb"]
    assert timeless(a) == timeless(b)


def test_an_actor_that_dies_twice_fails_cleanly(local_ray, monkeypatch, tmp_path, capsys) -> None:
    kill_on_submit(monkeypatch, lambda label, n: label.startswith("popular"))
    out = tmp_path / "b.json"
    argv = ["benchmark", "--env", "ParametricUserSim-v0", "--users", "6", "--agents", "popular"]
    assert main([*argv, "--ray", "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "died 2 times" in err[0] and "popular" in err[0], err
    assert not out.exists()


def test_a_lost_head_fails_at_the_first_dead_actor(local_ray, monkeypatch) -> None:
    # the runtime is the local one; the address given is where the (now gone) head was
    kill_on_submit(monkeypatch, lambda label, n: True)
    address = f"127.0.0.1:{closed_port()}"
    with ActorPool(RayConfig(address=address), max_actors=1) as pool:
        with pytest.raises(
            DistributedError, match=f"lost the Ray cluster: cannot reach .*{address}"
        ):
            pool.run([Unit(lambda state: 1, (), "one")])
        assert pool.started == 1  # no fresh actor for a cluster that is gone


def test_unreachable_address_fails_in_seconds(capsys, tmp_path) -> None:
    out = tmp_path / "b.json"
    address = f"127.0.0.1:{closed_port()}"
    t0 = time.perf_counter()
    rc = main(["benchmark", "--env", "ParametricUserSim-v0", "--users", "4", "--ray", address])
    assert rc == 2 and time.perf_counter() - t0 < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot reach the Ray cluster at {address}" in err[0], err
    assert main(["validate", "--ray", address, "--json", str(out)]) == 2
    assert "cannot reach the Ray cluster" in capsys.readouterr().err
    assert not out.exists()


def test_without_ray_the_flag_says_how_to_install_it(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["benchmark", "--env", "ParametricUserSim-v0", "--users", "2", "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'llm-usersim[ray]'" in err[0], err


def test_cuda_on_a_cluster_without_gpus_fails_clearly(local_ray, capsys, tmp_path) -> None:
    out = tmp_path / "b.json"
    argv = ["benchmark", "--users", "4", "--device", "cuda", "--ray", "--json", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda asks for a GPU per actor" in err[0], err
    assert "0 GPUs" in err[0] and not out.exists()


def test_a_hung_unit_times_out_and_an_error_in_a_unit_is_raised_as_is(local_ray) -> None:
    def hang(state: Any, seconds: float) -> None:
        time.sleep(seconds)

    def bad(state: Any) -> None:
        raise ValueError("a bad unit")

    # a generous limit for the error (the actor's first unit also imports torch, which takes
    # more than 3 s on a loaded machine), a short one for the hang
    with ActorPool(RayConfig(unit_timeout_s=120.0, retries=0), max_actors=1) as pool:
        with pytest.raises(ValueError, match="a bad unit"):
            pool.run([Unit(bad, (), "bad")])
    with ActorPool(RayConfig(unit_timeout_s=3.0, retries=0), max_actors=1) as pool:
        t0 = time.perf_counter()
        with pytest.raises(DistributedError, match="hang timed out 1 times"):
            pool.run([Unit(hang, (60.0,), "hang")])
        assert time.perf_counter() - t0 < 30


def test_validate_json_on_ray_equals_one_process(local_ray, tiny_sim_dir, tmp_path) -> None:
    one, distributed = tmp_path / "one.json", tmp_path / "ray.json"
    argv = ["validate", "--sim", str(tiny_sim_dir), *FAST_VALIDATE, "--baseline-users", "30"]
    argv += ["--policies", "random,greedy,slateq"]
    assert main([*argv, "--json", str(one)]) == 0
    assert main([*argv, "--ray", "--json", str(distributed)]) == 0
    a, b = json.loads(one.read_text()), json.loads(distributed.read_text())
    assert list(b["policy_returns"]) == ["random", "greedy", "slateq"]
    assert timeless(a) == timeless(b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_benchmark_with_a_gpu_per_actor_equals_one_process(local_ray, tmp_path) -> None:
    argv = ["benchmark", "--users", "16", "--batch", "8", "--agents", "random,greedy,slateq"]
    argv += ["--device", "cuda"]
    one, distributed = tmp_path / "one.json", tmp_path / "ray.json"
    assert main([*argv, "--json", str(one)]) == 0
    assert main([*argv, "--ray", "--json", str(distributed)]) == 0
    a, b = json.loads(one.read_text()), json.loads(distributed.read_text())
    assert timeless(a) == timeless(b)
