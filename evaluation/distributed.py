"""Scale-out on Ray: work units (users of one agent, one side of the ranking) run on actors.

`llm-usersim benchmark --ray [ADDRESS]` and `llm-usersim validate --ray [ADDRESS]` split their
users across Ray actors, each holding one batched simulator on its own device (one GPU each with
`--device cuda`, one CPU each otherwise), and merge the per-user results in the driver. User i's
randomness depends only on (seed, i) (`recsim_env.episodes.run_episodes`), so a unit's result
depends only on what it is asked, not on where it runs: the distributed JSON equals the
single-process JSON for the same seed, apart from wall-clock fields such as `seconds` (tests on a local
runtime with 2 CPUs; also the no-argument benchmark's 200 users on the default simulator).

The pieces:

- `RayConfig`: where the cluster is (no address: start a local runtime) and the fault settings.
- `ray_runtime(cfg)`: connects (or starts a local runtime) and disconnects; an unreachable
  address fails in milliseconds (a TCP check before `ray.init`, whose own retries take about 14
  minutes by default with Ray 2.60) with a `DistributedError`.
- `ActorPool(cfg, device).run(units)`: one unit at a time per actor. An actor that dies (or
  runs a unit past `unit_timeout_s`) is replaced by a fresh one and its unit runs again from
  the start, which gives the identical result; a unit whose actor dies `retries + 1` times
  fails the run with a `DistributedError` (nothing is written: the callers write their files
  only after every unit is back). An exception raised by the unit's own code (a bad agent
  name, a missing file) is re-raised as is.
- `WorkerState`: what an actor keeps between units (its device; vector envs and simulators
  worth reusing).

The connection, the actor and the pool stay in one module: they share the one place Ray is
imported and the failure modes each of them turns into a `DistributedError`.

Ray is optional (`pip install 'llm-usersim[ray]'`: `ray==2.60.0`, `dm_tree` and `lz4`, never
`ray[rllib]`, whose gymnasium pin would downgrade the main install); it is imported only here and
in `agents.rllib`, and only when used.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RAY_TESTED_VERSION = "2.60.0"
"""The Ray release the tests ran with."""
FAST_FAIL_ENV = {
    "RAY_NUM_REDIS_GET_RETRIES": "1",
    "RAY_py_gcs_connect_timeout_s": "2",
    "RAY_gcs_rpc_server_connect_timeout_s": "1",
}
"""Set (unless already set) before Ray is imported when connecting to an address: a port that
answers but is no Ray head then fails in about 5 s instead of 20 retries of about 41 s each."""


_STARTED_HERE: list[bool] = []
"""Non-empty while a `ray_runtime` block of this process holds the runtime it started."""


class DistributedError(RuntimeError):
    """The cluster cannot do the work: unreachable, lacking a device, or an actor died twice."""


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Where the Ray cluster is and how the driver treats failures."""

    address: str | None = None
    """'HOST:PORT' of a running cluster's head (`ray start --head`), 'auto' (the cluster this
    machine belongs to), or None: start a local runtime for this run."""
    actors: int | None = None
    """Actors (None: one per GPU of the cluster with a CUDA device, else one per CPU)."""
    num_cpus: int | None = None
    """CPUs of a local runtime (None: all of this machine's)."""
    retries: int = 1
    """Times a unit whose actor died (or timed out) is run again on a fresh actor."""
    unit_timeout_s: float = 3600.0
    """Longest a unit may run (from submission) before its actor counts as hung and is killed."""
    start_timeout_s: float = 120.0
    """Longest an actor (also one replacing a dead one) may take to start; its imports and its
    simulator come with its first unit."""
    connect_timeout_s: float = 3.0
    """TCP check of the head's address before connecting."""

    def __post_init__(self) -> None:
        """Validate ranges and the address's form."""
        for name in ("actors", "num_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        for name in ("unit_timeout_s", "start_timeout_s", "connect_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.address is not None:
            head_address(self.address)
            if self.num_cpus is not None:
                raise ValueError("num_cpus sets a local runtime's CPUs: leave it out with address")


def head_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a 'HOST:PORT' or 'ray://HOST:PORT' address; None for 'auto'.

    Raises:
        ValueError: any other form.
    """
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"Ray address {address!r}: expected HOST:PORT (the head's GCS port, 6379 by "
            "default), ray://HOST:PORT or auto"
        )
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast when nothing listens at the head's address (a refused port fails in ms).

    Raises:
        DistributedError: the TCP connection was refused or timed out.
    """
    hp = head_address(address)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as exc:
        raise DistributedError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
            "(start one with `ray start --head`, or leave the address out for a local runtime)"
        ) from None


def import_ray() -> Any:
    """The `ray` module, or a DistributedError saying how to install it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage over the network
    try:
        import ray
    except ImportError:
        raise DistributedError(
            "Ray is not installed: pip install 'llm-usersim[ray]' "
            f"(ray=={RAY_TESTED_VERSION}, dm_tree and lz4)"
        ) from None
    return ray


@contextmanager
def ray_runtime(cfg: RayConfig) -> Iterator[Any]:
    """Connect to `cfg.address` (or start a local runtime) for the block; yields `ray`.

    A runtime that is already up in this process (`ray.init` by the caller) is used as is and
    left running; one started here is shut down at the end.

    Raises:
        DistributedError: Ray is missing, or the cluster is unreachable.
    """
    if cfg.address is not None:
        check_reachable(cfg.address, cfg.connect_timeout_s)
        for key, value in FAST_FAIL_ENV.items():
            os.environ.setdefault(key, value)
        # Ray 2.60 clusters use token authentication (the token from RAY_AUTH_TOKEN,
        # RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); without this the driver retries for 20 s
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        # the driver's core worker logs a failed GCS connection on stderr before ConnectionError
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    ray = import_ray()
    started = False
    if ray.is_initialized() and cfg.address is not None and not _STARTED_HERE:
        log.warning("Ray is already initialised in this process: using it, not %s", cfg.address)
    if not ray.is_initialized():
        try:
            ray.init(
                address=cfg.address,
                num_cpus=cfg.num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except ConnectionError as exc:
            where = cfg.address or "a local runtime"
            raise DistributedError(
                f"cannot connect to the Ray cluster at {where}: {_line(exc)}"
            ) from None
        started = True
        _STARTED_HERE.append(True)
    try:
        yield ray
    finally:
        if started:
            _STARTED_HERE.pop()
            ray.shutdown()


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def user_shards(users: int, parts: int) -> list[tuple[int, int]]:
    """(first user, users) of `parts` contiguous shards as even as can be (none empty).

    Example:
        >>> user_shards(10, 3)
        [(0, 3), (3, 4), (7, 3)]
    """
    edges = [round(users * j / min(parts, users)) for j in range(min(parts, users) + 1)]
    return [(a, b - a) for a, b in itertools.pairwise(edges)]


class WorkerState:
    """What one actor (or the local process) keeps between units.

    Attributes:
        device: the device this worker's simulators run on ('cuda' inside an actor that holds
            one GPU: Ray makes it the only visible one).
    """

    def __init__(self, device: str = "cpu") -> None:
        """An empty cache for a worker on `device`."""
        self.device = device
        self._cache: dict[Any, Any] = {}

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """The object stored under `key`, made by `make()` on first use."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def env_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Env arguments with a CUDA device replaced by this worker's device."""
        if str(kwargs.get("device", "cpu")).startswith("cuda"):
            return {**kwargs, "device": self.device}
        return dict(kwargs)


class UnitWorker:
    """The actor: runs units `fn(state, *args)` one at a time, keeping a `WorkerState`."""

    def __init__(self, device: str, threads: int) -> None:
        """Remember the device and the actor's CPUs (imports wait for the first unit)."""
        self.threads = threads
        self.state = WorkerState(device)
        self._limits: Any = None

    def ready(self) -> int:
        """The actor's process id (the first call returns once the actor has started)."""
        return os.getpid()

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """One unit: `fn(state, *args)`, with torch's and BLAS's threads at the actor's CPUs."""
        if self._limits is None:
            import torch
            from threadpoolctl import threadpool_limits

            torch.set_num_threads(self.threads)
            self._limits = threadpool_limits(limits=self.threads)
        return fn(self.state, *args)


@dataclass(frozen=True)
class Unit:
    """One piece of work: `fn(state, *args)` on some worker, with a label for messages."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    label: str


class ActorPool:
    """Actors that run units; see the module docstring for retries and timeouts.

    Example:
        >>> with ray_runtime(RayConfig()):  # doctest: +SKIP
        ...     results = ActorPool(RayConfig(), "cpu").run([Unit(fn, (1,), "one")])
    """

    def __init__(self, cfg: RayConfig, device: str = "cpu", max_actors: int | None = None) -> None:
        """Check the cluster can hold the actors (Ray must be initialised); start none yet.

        Args:
            cfg: the cluster and fault settings (`cfg.actors`: how many actors).
            device: the simulators' device; CUDA gives every actor one GPU.
            max_actors: at most this many actors (fewer units than actors need no more).

        Raises:
            DistributedError: `device` is CUDA and the cluster has no (or too few) GPUs, or it
                has fewer CPUs than the actors asked for.
        """
        ray = import_ray()
        self.ray = ray
        self.cfg = cfg
        self.device = device
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        have = f"the Ray cluster has {cpus} CPUs and {gpus} GPUs"
        self.gpu = device.startswith("cuda")
        if self.gpu:
            if gpus < 1:
                raise DistributedError(
                    f"--device {device} asks for a GPU per actor, but {have}: "
                    "drop --device or add GPU nodes"
                )
            n = cfg.actors or gpus
            if n > gpus:
                raise DistributedError(f"{n} actors with one GPU each asked for, but {have}")
        else:
            if cpus < 1:
                raise DistributedError(f"{have}: no CPU to run an actor on")
            n = cfg.actors or cpus
            if n > cpus:
                raise DistributedError(f"{n} actors with one CPU each asked for, but {have}")
        self.size = max(1, min(n, max_actors or n))
        self.actors: list[Any] = []
        self.started = 0

    def _new_actor(self) -> Any:
        opts: dict[str, Any] = {"num_cpus": 1, "max_restarts": 0}
        if self.gpu:
            opts["num_gpus"] = 1
        self.started += 1
        cls = self.ray.remote(UnitWorker)
        return cls.options(**opts).remote("cuda" if self.gpu else "cpu", 1)

    def _check_head(self) -> None:
        """After an actor died: fail at once if the head at the given address is gone.

        (Ray itself ends a driver whose head stays unreachable for 60 s, with its own log line;
        for 'auto' and a local runtime that is what happens.)
        """
        if self.cfg.address is None or head_address(self.cfg.address) is None:
            return
        try:
            check_reachable(self.cfg.address, self.cfg.connect_timeout_s)
        except DistributedError as exc:
            raise DistributedError(f"lost the Ray cluster: {exc}; nothing was written") from None

    def _submit(self, unit: Unit, slot: int) -> Any:
        """Send `unit` to the actor in `slot`; returns the result's reference."""
        return self.actors[slot].run.remote(unit.fn, unit.args)

    def close(self) -> None:
        """Kill every actor of the pool."""
        for actor in self.actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone with the cluster
                pass
        self.actors = []

    def run(
        self,
        units: Sequence[Unit],
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """Run every unit; results in the units' order.

        A slot takes units once its actor has started (`start_timeout_s`, also for the fresh
        actor that replaces a dead one); a unit's `unit_timeout_s` counts from its submission
        to a started actor.

        Args:
            units: the work.
            on_result: called with (unit index, result) as each unit comes back (progress).

        Raises:
            DistributedError: a unit's actor died (or timed out) `retries + 1` times, an actor
                did not start in time, or the cluster failed.
            Exception: whatever a unit's own code raised.
        """
        from ray.exceptions import RayActorError, RayError, RayTaskError

        if not units:
            return []
        ray = self.ray
        results: list[Any] = [None] * len(units)
        failures = [0] * len(units)
        pending = deque(range(len(units)))
        idle: deque[int] = deque()
        starting: dict[Any, tuple[int, float]] = {}  # ready ref -> (slot, asked at)
        running: dict[Any, tuple[int, int, float]] = {}  # result ref -> (unit, slot, sent at)
        timed_out: set[Any] = set()

        def start(slot: int) -> None:
            starting[self.actors[slot].ready.remote()] = (slot, time.monotonic())

        if not self.actors:
            self.actors = [self._new_actor() for _ in range(self.size)]
            for slot in range(self.size):
                start(slot)
        else:
            idle.extend(range(len(self.actors)))
        poll = min(1.0, self.cfg.unit_timeout_s / 10, self.cfg.start_timeout_s / 10)
        try:
            while pending or running:
                while pending and idle:
                    i, slot = pending.popleft(), idle.popleft()
                    running[self._submit(units[i], slot)] = (i, slot, time.monotonic())
                ready, _ = ray.wait([*starting, *running], num_returns=1, timeout=poll)
                for ref in ready:
                    if ref in starting:
                        slot, _t = starting.pop(ref)
                        ray.get(ref)  # an actor that died while starting raises here
                        idle.append(slot)
                        continue
                    i, slot, _t = running.pop(ref)
                    try:
                        results[i] = ray.get(ref)
                    except RayTaskError as exc:  # the unit's own code raised
                        cause = exc.cause
                        raise (cause if isinstance(cause, Exception) else exc) from None
                    except RayActorError as exc:
                        self._check_head()
                        hung = ref in timed_out
                        why = "timed out" if hung else "died"
                        detail = f"after {self.cfg.unit_timeout_s:g} s" if hung else _line(exc)
                        failures[i] += 1
                        if failures[i] > self.cfg.retries:
                            raise DistributedError(
                                f"the Ray actor running {units[i].label} {why} "
                                f"{failures[i]} times (last: {detail}); nothing was written"
                            ) from None
                        log.warning(
                            "Ray actor running %s %s (%s): running it again on a fresh actor",
                            units[i].label,
                            why,
                            detail,
                        )
                        ray.kill(self.actors[slot], no_restart=True)
                        self.actors[slot] = self._new_actor()
                        start(slot)
                        pending.appendleft(i)
                        continue
                    if on_result is not None:
                        on_result(i, results[i])
                    idle.append(slot)
                now = time.monotonic()
                if any(now - t > self.cfg.start_timeout_s for _slot, t in starting.values()):
                    raise DistributedError(
                        f"a Ray actor did not start within {self.cfg.start_timeout_s:.0f} s "
                        f"(asked for {self.size} with one {'GPU' if self.gpu else 'CPU'} "
                        "each: is the cluster busy or gone?)"
                    )
                for ref, (_i, slot, t) in running.items():
                    if now - t > self.cfg.unit_timeout_s and ref not in timed_out:
                        timed_out.add(ref)  # its ref raises ActorDiedError next round
                        ray.kill(self.actors[slot], no_restart=True)
        except RayActorError as exc:  # an actor died while starting
            raise DistributedError(f"a Ray actor died while starting: {_line(exc)}") from None
        except RayError as exc:  # the cluster itself failed (lost node, GCS gone, ...)
            raise DistributedError(f"the Ray cluster failed: {_line(exc)}") from None
        return results

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
