"""Simulator checkpoints: safetensors + JSON only, versioned, hashed, never unpickled.

A checkpoint directory holds ``config.json`` (the backbone's `transformers` config),
``model.safetensors`` (all weights and the catalog buffers), ``population.safetensors`` (the
profiles episodes are drawn from), ``vocab.json`` (the vocabulary, behaviours included) and
``simulator_config.json`` (settings, profile encoder, catalog, provenance, and the SHA-256 of the
other four files). simulator_config.json is written last: it is the manifest, and a load checks
every hash against it, so a checkpoint whose files do not belong together (an interrupted
write, flipped bytes) is refused instead of silently loaded. Non-finite weights are refused too.

Format versions: 1 (weights under ``gpt2.``, no behaviours, no hashes) still loads; 2 is
written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from simulators.atomic import atomic_write, atomic_write_text, remove_stale_temporaries
from simulators.catalog import ProfileEncoder
from simulators.gpt2_user.simulator import GPT2UserSimulator, check_device
from simulators.lm.backbone import backbone_class
from simulators.lm.model import SimulatorConfig, UserLM
from simulators.tokenization import SimTokenizer

DEFAULT_SIMULATOR_DIR = Path(__file__).resolve().parent.parent / "default"
"""The embedded default simulator."""
CHECKPOINT_FILES = (
    "config.json",
    "model.safetensors",
    "population.safetensors",
    "vocab.json",
    "simulator_config.json",
)
HASHED_FILES = CHECKPOINT_FILES[:4]
"""Files whose SHA-256 the manifest (simulator_config.json) records."""
CATALOG_BUFFERS = (
    "item_features",
    "item_text",
    "item_known",
    "item_category",
    "item_text_emb",
    "pretrained_text.item_emb",
)
"""Weights with one row per catalog item."""
CHECKPOINT_FORMAT_VERSION = 2
_V1_PREFIX, _V2_PREFIX = "gpt2.", "backbone.lm."


class CheckpointError(ValueError):
    """A simulator checkpoint is missing, corrupt or inconsistent; the message names the file."""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_simulator(sim: GPT2UserSimulator, directory: str | Path) -> Path:
    """Write a checkpoint as one commit (see `commit_pending`; no pickle).

    Every file is first written beside its final name as `NAME.new` (each atomically), the
    manifest last; then the new files are renamed into place. An interruption before the
    manifest's `.new` exists leaves the earlier checkpoint untouched; one after it is completed
    by the next save or load, so the directory always reads as one whole checkpoint.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    for name in CHECKPOINT_FILES:  # leftovers of a write interrupted before its manifest
        (out / f"{name}{NEW}").unlink(missing_ok=True)
    n = sim.tokenizer.num_items  # items added after training (`add_items`) are not saved
    state = {
        k: (v[:n] if k in CATALOG_BUFFERS else v)
        .detach()
        .to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
        .contiguous()
        for k, v in sim.model.state_dict().items()
    }
    staged = {name: out / f"{name}{NEW}" for name in CHECKPOINT_FILES}
    atomic_write(
        staged["model.safetensors"], lambda p: save_file(state, p, metadata={"format": "pt"})
    )
    population = torch.from_numpy(sim.population.astype(np.int16))
    atomic_write(
        staged["population.safetensors"], lambda p: save_file({"population": population}, p)
    )
    atomic_write_text(staged["config.json"], sim.model.backbone.config_json())
    atomic_write_text(staged["vocab.json"], json.dumps(sim.tokenizer.to_dict()) + "\n")
    meta = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "simulator": {**sim.sim_config.to_dict(), "format_version": CHECKPOINT_FORMAT_VERSION},
        "profile_encoder": sim.profile_encoder.to_dict(),
        "items": {
            c: sim.items[c].iloc[:n].tolist()
            for c in ("item_id", "title", "category", "price")
            if c in sim.items
        },
        "extra": sim.extra,
        "sha256": {name: file_sha256(staged[name]) for name in HASHED_FILES},
    }
    atomic_write_text(staged["simulator_config.json"], json.dumps(meta, indent=1) + "\n")
    commit_pending(out)
    return out


def update_extra(directory: str | Path, extra: dict[str, Any]) -> None:
    """Merge `extra` into a saved checkpoint's `extra` (its manifest is rewritten atomically).

    The hashed files are untouched, so the manifest's hashes stay valid; used to keep a record
    about the training run current (the privacy budget spent) after the weights were saved.
    """
    commit_pending(directory)  # a save staged but not yet committed comes first
    path = Path(directory) / "simulator_config.json"
    meta = _read_json(path)
    meta["extra"] = {**(meta.get("extra") or {}), **extra}
    atomic_write_text(path, json.dumps(meta, indent=1) + "\n")


NEW = ".new"
"""Suffix of a checkpoint file written but not yet committed."""


def commit_pending(directory: str | Path) -> bool:
    """Complete a checkpoint write whose manifest was staged (`simulator_config.json.new`).

    The staged manifest is written only once every other staged file is complete, so its
    presence means the new checkpoint is whole: each `NAME.new` still present replaces `NAME`,
    the manifest last. Idempotent, so an interruption here is completed by the next call.

    Returns:
        True when a pending write was committed.
    """
    d = Path(directory)
    manifest = d / f"simulator_config.json{NEW}"
    if not manifest.is_file():
        return False
    for name in HASHED_FILES:
        staged = d / f"{name}{NEW}"
        if staged.is_file():
            os.replace(staged, d / name)
    os.replace(manifest, d / "simulator_config.json")
    return True


def load_simulator(
    directory: str | Path, device: str = "cpu", dtype: str = "float32", capacity: int = 1
) -> GPT2UserSimulator:
    """Load a checkpoint written by `save_simulator` (or a format-1 one).

    Raises:
        CheckpointError: a file is missing, unreadable, corrupt, inconsistent with the others
            or holds non-finite weights (the message names the file).
    """
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: simulator checkpoint directory does not exist")
    try:
        commit_pending(d)  # a save interrupted after its manifest was staged
    except OSError as exc:
        raise CheckpointError(f"{d}: an interrupted save could not be completed ({exc})") from None
    for name in CHECKPOINT_FILES:
        if not (d / name).is_file():
            raise CheckpointError(f"{d / name}: file is missing from the simulator checkpoint")
    meta = _read_json(d / "simulator_config.json")
    _check_hashes(d, meta)
    vocab = _read_json(d / "vocab.json")
    config = _read_json(d / "config.json")
    try:
        sim_config = SimulatorConfig(**meta["simulator"])
        tokenizer = SimTokenizer.from_dict(vocab)
        encoder = ProfileEncoder.from_dict(meta["profile_encoder"])
        items = pd.DataFrame(meta["items"])
        backbone = backbone_class(str(config.get("model_type", "gpt2"))).from_config_dict(config)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{d}: inconsistent simulator config or vocabulary ({exc})") from None
    vocab_size = int(getattr(backbone.config, "vocab_size", -1))
    if vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            f"{d / 'config.json'}: vocab_size {vocab_size} does not match vocab.json "
            f"({tokenizer.vocab_size} tokens)"
        )
    if len(items) != tokenizer.num_items:
        raise CheckpointError(
            f"{d / 'simulator_config.json'}: {len(items)} items but vocab.json has "
            f"{tokenizer.num_items}"
        )
    state = _load_safetensors(d / "model.safetensors")
    state = {
        (_V2_PREFIX + k[len(_V1_PREFIX) :] if k.startswith(_V1_PREFIX) else k): v
        for k, v in state.items()
    }
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{d / 'model.safetensors'}: tensor {key!r} has non-finite values"
            )
    population = _load_safetensors(d / "population.safetensors").get("population")
    if population is None or population.ndim != 2:
        raise CheckpointError(f"{d / 'population.safetensors'}: no (P, slots) 'population' tensor")
    if population.shape[1] != encoder.slots or int(population.max()) >= len(encoder.vocab):
        raise CheckpointError(
            f"{d / 'population.safetensors'}: profiles do not match the profile encoder "
            f"({encoder.slots} slots, {len(encoder.vocab)} tokens)"
        )
    try:
        model = UserLM(
            backbone,
            sim_config,
            state["item_features"],
            state["item_text"],
            state["item_known"],
            tokenizer.output_tokens,
            state.get("item_category"),
            state.get("item_text_emb"),
            state.get("pretrained_text.item_emb"),
            state.get("pretrained_text.token_emb"),
        )
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{d / 'model.safetensors'}: weights do not match config.json ({first})"
        ) from None
    return GPT2UserSimulator(
        model,
        tokenizer,
        encoder,
        population.numpy(),
        items,
        meta.get("extra"),
        device,
        dtype,
        capacity,
    )


def _check_hashes(d: Path, meta: dict[str, Any]) -> None:
    """Compare the manifest's SHA-256 of each file (format 2) with the files on disk."""
    hashes = meta.get("sha256")
    if hashes is None:
        if int(meta.get("format_version", 1)) >= 2:
            raise CheckpointError(f"{d / 'simulator_config.json'}: the file hashes are missing")
        return  # format 1: no hashes
    if not isinstance(hashes, dict):
        raise CheckpointError(f"{d / 'simulator_config.json'}: 'sha256' is not a mapping")
    for name in HASHED_FILES:
        if hashes.get(name) != file_sha256(d / name):
            raise CheckpointError(
                f"{d / name}: content does not match the checkpoint's recorded SHA-256 "
                "(corrupt, or written by another save than simulator_config.json)"
            )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None


def load_batched_simulator(
    simulator: Any = None, device: str = "cpu", dtype: str = "float32", capacity: int = 1
) -> Any:
    """A batched simulator from `simulator` with rows 0..capacity-1 usable.

    `simulator` is the embedded default (None or 'default'), a checkpoint directory, or an
    existing simulator object (any `simulators.base.UserSimulator`; its capacity is grown).
    """
    check_device(device)
    if simulator is None or (isinstance(simulator, str) and simulator == "default"):
        simulator = DEFAULT_SIMULATOR_DIR
    if isinstance(simulator, (str, Path)):
        return load_simulator(simulator, device=device, dtype=dtype, capacity=capacity)
    simulator.ensure_capacity(capacity)
    return simulator
