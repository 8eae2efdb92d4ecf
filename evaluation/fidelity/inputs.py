"""The fidelity report's inputs, gathered once in a `ValidationRun`.

`setup_run(cfg)` loads the simulator, resolves the world, prepares the held-out (and
training-part) logs and builds their events; the sections of `evaluation.fidelity.report` read
the run and add the models' probabilities to it.

Where the held-out events come from:

- No `logs`: fresh users of the ground-truth world (`generate(users, policy, seed)` with a seed
  the simulator's training logs did not use), logged with the training logs' policy (the
  default's: 'mixed'). Every held-out user is a cold user. The baselines are fitted on
  `baseline_users` further fresh users (seed + 1) of the same world and policy, standing in for
  the simulator's training part (its logs are not shipped with the checkpoint).
- `logs` that the checkpoint was trained on (same meta.json): the users train-sim held out for
  validation (same split) are the held-out (cold) users; the others are the training part
  (baselines; a sample of them are the warm users).
- Other `logs`: every user is held out; baselines are fitted on fresh world users when the
  logs come from a world, else skipped.

The world (the ground truth) is the logs' world, the checkpoint's training world, `default`,
or a WorldConfig JSON file.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.fidelity.config import ValidateConfig
from evaluation.fidelity.events import (
    Events,
    add_shown_items,
    align_items,
    build_events,
    select_users,
)
from simulators.logs import InteractionLogs
from simulators.wording import plural

log = logging.getLogger(__name__)


def _resolve_world(spec: str, logs_meta: dict | None, train_meta: dict) -> Any:
    """The ParametricUserModel named by --world (None for no ground truth)."""
    from simulators.parametric import ParametricUserModel, WorldConfig

    def build(d: dict, strict: bool = False) -> Any:
        return ParametricUserModel(WorldConfig.from_dict(d, strict=strict))

    if spec == "none":
        return None
    if spec == "default":
        return ParametricUserModel(WorldConfig())
    if spec == "auto":
        if logs_meta is not None:
            return build(logs_meta["world"]) if isinstance(logs_meta.get("world"), dict) else None
        if isinstance(train_meta.get("world"), dict):
            return build(train_meta["world"])
        return ParametricUserModel(WorldConfig())
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"--world must be auto, default, none or a WorldConfig JSON file; got {spec!r}"
        )
    try:
        return build(json.loads(path.read_text()), strict=True)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"--world {path}: {exc}") from None


def _env_config(meta: dict) -> Any:
    """The EnvConfig recorded in log metadata (defaults where absent)."""
    from recsim_env.config import EnvConfig

    env = meta.get("env")
    if not isinstance(env, dict):
        env = {}
    cfg, _ = EnvConfig.from_kwargs(env)  # (older metadata may hold fields since removed)
    return cfg


def _check_catalog(sim: Any, world: Any) -> None:
    """Raise ValueError unless the simulator's catalog and profile vocabulary are the world's."""
    sim_ids = [str(i) for i in sim.items_table()["item_id"]]
    world_ids = [str(i) for i in world.items_table()["item_id"]]
    if sim_ids != world_ids:
        raise ValueError(
            "the simulator's catalog is not the world's (different item ids or order); "
            "pass --world none or the world the simulator was trained on"
        )
    if list(sim.profile_encoder.vocab) != list(world.profile_encoder.vocab):
        raise ValueError("the simulator's profile vocabulary differs from the world's")


def _session_users(logs: InteractionLogs) -> list[str]:
    """The user of every session, in tokenisation order (what train-sim splits)."""
    from simulators.logs import sessions_in_order

    steps = sessions_in_order(logs.steps)
    first = steps.drop_duplicates(["user_id", "session_id"])
    return first["user_id"].astype(str).tolist()


@dataclass
class PreparedLogs:
    """The held-out logs and what goes with them (see the module docstring).

    Attributes:
        heldout: the held-out (cold) users' logs.
        train: the training part the baselines are fitted on (None: no baselines).
        warm: training-part users evaluated as warm users (None: none).
        generated: the held-out users are fresh users of the world (not from `logs`).
        policy: the held-out logs' logging policy, where known.
        seed: seed of the fresh held-out users (the configured seed with `logs`).
        notes: what was decided on the way, for the report.
        members_known: `train` holds the simulator's own training users (the logs are its
            training logs), so membership can be measured against the held-out users.
        not_members: users of `train` the simulator was not trained on (its calibration
            users, `TrainConfig.calibration_fraction`).
    """

    heldout: InteractionLogs
    train: InteractionLogs | None
    warm: InteractionLogs | None
    generated: bool
    policy: str | None
    seed: int
    notes: list[str]
    members_known: bool = False
    not_members: frozenset[str] = frozenset()


def _check_fits(logs: InteractionLogs, sim: Any) -> None:
    """The slate rule (`simulators.slate_fit`) and the behaviours, before any work.

    Raises:
        LogFormatError: a slate longer than the simulator takes (naming file, row, column).
        ValueError: the logs' behaviours are not the simulator's, or their users table lacks
            one of the simulator's profile fields.
    """
    from simulators.slate_fit import check_slates, max_slate_items

    limit = max_slate_items(sim.sim_config, sim.prefix_length)
    check_slates(
        logs,
        limit,
        logs.source,
        f"the simulator's context of {sim.sim_config.context_length} tokens holds at most "
        f"{limit} items per slate after its {sim.prefix_length}-token profile",
    )
    if logs.behaviours != sim.behaviours:
        raise ValueError(
            f"{logs.source}/meta.json: the logs' behaviours {list(logs.behaviours.names)} are not "
            f"the simulator's {list(sim.behaviours.names)}; validate on logs of the same "
            "behaviours"
        )
    fields = list(sim.profile_encoder.fields)
    missing = [f for f in fields if f not in logs.users.columns]
    if missing:
        raise ValueError(
            f"{logs.source}/users.parquet: the simulator reads the profile fields {fields} and "
            f"the logs' users table has no {', '.join(missing)} column; validate on logs with "
            "those columns (an empty value counts as unknown) or on a simulator trained on these "
            f"logs (llm-usersim train-sim --logs {logs.source})"
        )


def _prepare_logs(
    cfg: ValidateConfig, world: Any, train_meta: dict, train_cfg: dict, env_cfg: Any, sim: Any
) -> PreparedLogs:
    """Held-out logs, the training part (baselines) and warm users (see the module docstring)."""
    from recsim_env.log_generation import POLICIES, generate
    from simulators.logs import read_logs
    from simulators.training.calibration import calibration_mask
    from simulators.training.data import split_by_user

    notes: list[str] = []
    train_seed = train_meta.get("seed")
    policy = cfg.policy or (
        str(train_meta["policy"]) if train_meta.get("policy") in POLICIES else "mixed"
    )

    def fresh(users: int, seed: int) -> InteractionLogs:
        return generate(users, policy, seed, env_cfg, world)

    if cfg.logs is None:
        if world is None:
            raise ValueError(
                "the simulator was not trained on a known world's catalog: pass --logs DIR "
                "(held-out logs of its catalog) or --world (the world it was trained on)"
            )
        seed = cfg.seed
        while seed == train_seed or seed + 1 == train_seed:
            seed += 2
        if seed != cfg.seed:
            notes.append(f"held-out seed moved from {cfg.seed} to {seed} (used in training)")
        heldout = fresh(cfg.users, seed)
        train = fresh(cfg.baseline_users, seed + 1) if cfg.baseline_users else None
        if train is not None:
            notes.append(
                f"baselines fitted on {cfg.baseline_users} fresh users (seed {seed + 1}, policy "
                f"{policy}) standing in for the simulator's training part"
            )
        return PreparedLogs(heldout, train, None, True, policy, seed, notes)

    logs = read_logs(cfg.logs)
    _check_fits(logs, sim)
    meta_equal = logs.meta == train_meta
    users_all = sorted(set(logs.steps["user_id"].astype(str)))
    rng = np.random.default_rng(cfg.seed)
    train = warm = None
    calibration_users: set[str] = set()
    if meta_equal and train_cfg:
        session_users = _session_users(logs)
        is_val = split_by_user(
            session_users, float(train_cfg.get("val_fraction", 0.1)), int(train_cfg.get("seed", 0))
        )
        is_cal = calibration_mask(
            session_users,
            is_val,
            float(train_cfg.get("calibration_fraction", 0.0)),
            int(train_cfg.get("seed", 0)),
        )
        held_users = sorted({u for u, v in zip(session_users, is_val) if v})
        calibration_users = {u for u, c in zip(session_users, is_cal) if c}
        train_users = sorted(set(users_all) - set(held_users))
        notes.append(
            f"the logs are the simulator's training logs: the {len(held_users)} users train-sim "
            "held out for validation are the held-out (cold) users"
        )
        if calibration_users:
            notes.append(
                f"{plural(len(calibration_users), 'calibration user')} (not trained on) in the "
                "baselines' training part, not among the warm users"
            )
        train = select_users(logs, set(train_users))
        members = [u for u in train_users if u not in calibration_users]
        if cfg.warm_users and members:
            pick = rng.choice(len(members), min(cfg.warm_users, len(members)), replace=False)
            warm = select_users(logs, {members[i] for i in pick})
    else:
        held_users = users_all
        if world is not None and cfg.baseline_users:
            train = fresh(cfg.baseline_users, cfg.seed + 1)
            notes.append(f"baselines fitted on {cfg.baseline_users} fresh world users")
        else:
            notes.append(
                "the logs are not the simulator's training logs and no world is known: "
                "no training part, the baselines are skipped"
            )
    if len(held_users) > cfg.users:
        pick = rng.choice(len(held_users), cfg.users, replace=False)
        held_users = [held_users[i] for i in sorted(pick)]
        notes.append(f"held-out users subsampled to {cfg.users}")
    log_policy = logs.meta.get("policy") if logs.meta.get("policy") in POLICIES else None
    return PreparedLogs(
        select_users(logs, set(held_users)),
        train,
        warm,
        False,
        log_policy,
        cfg.seed,
        notes,
        members_known=meta_equal and bool(train_cfg),
        not_members=frozenset(calibration_users),
    )


@dataclass
class ValidationRun:
    """What the sections share: inputs, held-out events and the models' probabilities."""

    cfg: ValidateConfig
    sim_path: str
    sim: Any
    world: Any
    env_cfg: Any
    data: PreparedLogs
    heldout: InteractionLogs
    events: Events
    known: np.ndarray
    notes: list[str]
    timings: dict[str, float]
    sim_probs: np.ndarray | None = None
    sim_leave: np.ndarray | None = None
    true_probs: np.ndarray | None = None
    true_leave: np.ndarray | None = None
    new_items: np.ndarray | None = None
    """(num_items,) bool: items added to the simulator's catalog from the logs (not in its
    training catalog)."""

    def lap(self, name: str, t0: float) -> None:
        """Record a section's time."""
        self.timings[name] = round(time.perf_counter() - t0, 2)
        if self.cfg.progress:
            log.warning("%s done in %.1fs", name, self.timings[name])


def setup_run(cfg: ValidateConfig) -> ValidationRun:
    """Load the simulator, resolve the world, prepare held-out (and training-part) logs."""
    from simulators.gpt2_user import DEFAULT_SIMULATOR_DIR, load_batched_simulator

    t0 = time.perf_counter()
    sim_path = cfg.sim or str(DEFAULT_SIMULATOR_DIR)
    sim = load_batched_simulator(sim_path, device=cfg.device, capacity=1)
    training = (sim.extra or {}).get("training", {}) or {}
    train_meta = training.get("log_meta", {}) or {}
    train_cfg = training.get("train_config", {}) or {}
    logs_meta = None
    if cfg.logs is not None:
        from simulators.logs import read_logs

        logs_meta = read_logs(cfg.logs, validate=False).meta
    world = _resolve_world(cfg.world, logs_meta, train_meta)
    if world is not None:
        try:
            _check_catalog(sim, world)
        except ValueError:
            if cfg.world != "auto":
                raise
            log.warning("the simulator's catalog differs from the world's: no ground truth")
            world = None
    env_cfg = _env_config(logs_meta if logs_meta is not None and "env" in logs_meta else train_meta)
    data = _prepare_logs(cfg, world, train_meta, train_cfg, env_cfg, sim)
    # items the simulator never saw enter by their side information: cold items, not an error
    catalog = len(sim.items_table())
    added = {
        name: add_shown_items(sim, part)
        for name, part in (("heldout", data.heldout), ("train", data.train), ("warm", data.warm))
        if part is not None
    }
    items = sim.items_table()
    data.train = None if data.train is None else align_items(data.train, items)
    data.warm = None if data.warm is None else align_items(data.warm, items)
    heldout = align_items(data.heldout, items)
    new_items = np.zeros(len(items), dtype=bool)
    new_items[catalog:] = True
    if sum(added.values()):
        notes = ", ".join(f"{n} in the {k} part" for k, n in added.items() if n)
        data.notes.append(
            f"{sum(added.values())} logged items are not in the simulator's catalog ({notes}): "
            "they enter by their side information (title, category, price) or the learned "
            "unknown-item input, and count as cold items"
        )
    run = ValidationRun(
        cfg=cfg,
        sim_path=str(sim_path),
        sim=sim,
        world=world,
        env_cfg=env_cfg,
        data=data,
        heldout=heldout,
        events=build_events(heldout, sim.profile_encoder),
        known=sim.model.item_known.detach().cpu().numpy(),
        notes=list(data.notes),
        timings={},
        new_items=new_items,
    )
    run.lap("setup", t0)
    return run
