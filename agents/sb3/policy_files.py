"""Trained SB3 policies as safetensors + JSON: saved and loaded without unpickling anything.

SB3's own `.zip` stores spaces, schedules and the policy class with cloudpickle, so loading one
runs code from the file. `save_policy(model, DIR)` writes instead:

- `DIR/policy.safetensors`: the policy network's weights;
- `DIR/policy.json`: algorithm, policy class (one of a fixed list), its keyword arguments, the
  observation and action spaces (described field by field), the env it was trained on.

`load_policy(DIR)` rebuilds the policy network from that description and loads the weights:
nothing in the files is executed. The result predicts like the trained model (a test pins it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors.torch import load_model, save_model

from agents.sb3.loading import METADATA_ATTR, SB3SlatePolicy
from simulators.atomic import atomic_write, atomic_write_text

POLICY_FORMAT = "llm-usersim-policy"
POLICY_VERSION = 1
POLICY_FILES = ("policy.json", "policy.safetensors")


class PolicyFileError(ValueError):
    """A saved policy is missing, corrupt or of an unknown kind; the message names the file."""


def _policy_classes() -> dict[str, type]:
    """The policy classes a file may name (nothing else is ever constructed)."""
    from stable_baselines3.common.policies import MultiInputActorCriticPolicy
    from stable_baselines3.dqn.policies import MultiInputPolicy as DQNMultiInputPolicy

    from agents.sb3.policy import SlatePolicy

    return {
        "SlatePolicy": SlatePolicy,
        "MultiInputActorCriticPolicy": MultiInputActorCriticPolicy,
        "DQNMultiInputPolicy": DQNMultiInputPolicy,
    }


def _extractor_classes() -> dict[str, type]:
    from stable_baselines3.common.torch_layers import CombinedExtractor

    from agents.sb3.policy import SlateFeaturesExtractor

    return {
        "SlateFeaturesExtractor": SlateFeaturesExtractor,
        "CombinedExtractor": CombinedExtractor,
    }


def space_to_dict(space: spaces.Space) -> dict[str, Any]:
    """A JSON description of the spaces the envs use (Dict of Box/MultiBinary/Discrete/...)."""
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_dict(v) for k, v in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "low": space.low.tolist(),
            "high": space.high.tolist(),
            "shape": list(space.shape),
            "dtype": str(space.dtype),
        }
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "dtype": str(space.dtype)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise ValueError(f"cannot describe a {type(space).__name__} space")


def space_from_dict(d: dict[str, Any]) -> spaces.Space:
    """Inverse of `space_to_dict`."""
    kind = d.get("type")
    if kind == "Dict":
        return spaces.Dict({k: space_from_dict(v) for k, v in d["spaces"].items()})
    if kind == "Box":
        dtype = np.dtype(d["dtype"])
        return spaces.Box(
            np.asarray(d["low"], dtype=dtype),
            np.asarray(d["high"], dtype=dtype),
            tuple(d["shape"]),
            dtype,
        )
    if kind == "MultiBinary":
        return spaces.MultiBinary(d["n"])
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(d["nvec"]), dtype=np.dtype(d["dtype"]))
    if kind == "Discrete":
        return spaces.Discrete(int(d["n"]), start=int(d.get("start", 0)))
    raise ValueError(f"unknown space type {kind!r}")


def _jsonable_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    extractors = {cls: name for name, cls in _extractor_classes().items()}
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in ("optimizer_class", "optimizer_kwargs"):
            continue  # training state: a loaded policy only predicts
        if isinstance(value, type):
            if value not in extractors:
                raise ValueError(f"policy_kwargs[{key!r}] = {value.__name__} cannot be saved")
            out[key] = {"class": extractors[value]}
        else:
            json.dumps(value)  # raises on anything that is not plain data
            out[key] = value
    return out


def _kwargs_from_json(kwargs: dict[str, Any]) -> dict[str, Any]:
    extractors = _extractor_classes()
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if isinstance(value, dict) and set(value) == {"class"}:
            if value["class"] not in extractors:
                raise ValueError(f"unknown feature extractor {value['class']!r}")
            out[key] = extractors[value["class"]]
        else:
            out[key] = value
    return out


def save_policy(model: Any, directory: str | Path) -> Path:
    """Write an SB3 model's policy as safetensors + JSON (see the module docstring)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    policy = model.policy
    classes = {cls: name for name, cls in _policy_classes().items()}
    if type(policy) not in classes:
        raise ValueError(
            f"cannot save a {type(policy).__name__}: not one of {sorted(classes.values())}"
        )
    meta = dict(getattr(model, METADATA_ATTR, None) or {})
    meta.setdefault("algo", type(model).__name__.lower())
    doc = {
        "format": POLICY_FORMAT,
        "version": POLICY_VERSION,
        "policy_class": classes[type(policy)],
        "policy_kwargs": _jsonable_kwargs(dict(model.policy_kwargs)),
        "observation_space": space_to_dict(policy.observation_space),
        "action_space": space_to_dict(policy.action_space),
        "llm_usersim": meta,
    }
    # save_model keeps one copy of weights SB3 shares between the actor's and critic's extractor
    atomic_write(out / "policy.safetensors", lambda p: save_model(policy, p))
    atomic_write_text(out / "policy.json", json.dumps(doc, indent=1) + "\n")
    return out


def load_policy(
    directory: str | Path, device: str = "cpu", name: str | None = None
) -> SB3SlatePolicy:
    """Rebuild a policy saved by `save_policy` (nothing in the files is executed).

    Raises:
        PolicyFileError: a file is missing, unreadable, or describes an unknown policy.
    """
    d = Path(directory)
    for file in POLICY_FILES:
        if not (d / file).is_file():
            raise PolicyFileError(
                f"{d / file}: file is missing (not a policy saved by train-agent)"
            )
    try:
        doc = json.loads((d / "policy.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyFileError(f"{d / 'policy.json'}: not valid JSON ({exc})") from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != POLICY_FORMAT
        or doc.get("version") != POLICY_VERSION
    ):
        raise PolicyFileError(
            f"{d / 'policy.json'}: not a {POLICY_FORMAT} version {POLICY_VERSION} file"
        )
    try:
        cls = _policy_classes()[doc["policy_class"]]
        obs_space = space_from_dict(doc["observation_space"])
        act_space = space_from_dict(doc["action_space"])
        kwargs = _kwargs_from_json(doc.get("policy_kwargs") or {})
        policy = cls(obs_space, act_space, lambda _: 0.0, **kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyFileError(f"{d / 'policy.json'}: cannot rebuild the policy ({exc})") from None
    try:
        missing, unexpected = load_model(policy, str(d / "policy.safetensors"), strict=True)
    except Exception as exc:  # safetensors and torch raise several types for a bad file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PolicyFileError(
            f"{d / 'policy.safetensors'}: weights do not load ({first})"
        ) from None
    policy = policy.to(torch.device(device)).eval()
    policy.set_training_mode(False)
    meta = doc.get("llm_usersim") or {}
    setattr(policy, METADATA_ATTR, meta)
    algo = str(meta.get("algo", "policy"))
    return SB3SlatePolicy(policy, name=name or f"{algo}:{d.name}")
