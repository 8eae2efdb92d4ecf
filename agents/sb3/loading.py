"""SB3 models as slate policies (`SB3SlatePolicy`), and loading third-party SB3 zips.

Policies trained here are saved as safetensors + JSON (`agents.sb3.policy_files`). SB3's own
`.zip` stores some objects (spaces, schedules, the policy class) with cloudpickle, so loading one
runs code from the file: `load_sb3_model` refuses unless `trust=True` (the CLI's
`--trust-sb3-zip`).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from recsim_env.sessions import top_k_slates
from recsim_env.wrappers import discrete_to_slate

SB3_ALGOS: tuple[str, ...] = ("ppo", "a2c", "dqn")
METADATA_ATTR = "llm_usersim"
"""Model attribute (saved in the zip's JSON `data`) describing the env it was trained on."""


class SB3SlatePolicy:
    """A stable-baselines3 model behind the slate-agent interface (`predict` gives slates).

    For models trained with Discrete actions (DQN) the chosen candidate is expanded into a
    slate by `discrete_to_slate`, the rule used in training; a model of a score action mode (a
    Box: PPO, SAC, TD3) shows its slate_size best candidates, as the env does: one score per
    candidate (`scores`), or one weight per item feature scoring each candidate by its features
    (`weights`; told apart by the width, so with as many candidates as features a Box model is
    read as `scores`). Observation keys the model was not trained on (catalog ids) are dropped
    before it sees them. `update` is a no-op.

    Attributes:
        model: the SB3 model.
        algo: ppo, a2c or dqn.
        name: a label for tables.
        user_independent: True: a deterministic policy's slate for a user depends only on that
            user's observation (how the benchmark and the ranking call it).
    """

    user_independent = True

    def __init__(self, model: Any, name: str | None = None, slate_size: int | None = None) -> None:
        """Wrap model; slate_size is needed for Discrete models not saved by llm-usersim."""
        self.model = model
        meta = getattr(model, METADATA_ATTR, None) or {}
        self.algo = str(meta.get("algo") or type(model).__name__.lower())
        self.name = name or self.algo
        self.discrete = isinstance(model.action_space, spaces.Discrete)
        self.scores = isinstance(model.action_space, spaces.Box)
        self.slate_size: int | None = slate_size or meta.get("slate_size")
        if (self.discrete or self.scores) and not self.slate_size:
            kind = "Discrete" if self.discrete else "scores or weights (Box)"
            raise ValueError(
                f"a {kind}-action model needs slate_size= (it was not saved by llm-usersim)"
            )
        self.keys = tuple(getattr(model.observation_space, "spaces", {}))

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """Slates (slate_size,) or (n, slate_size) for single or batched observations."""
        missing = [k for k in self.keys if k not in observation]
        if missing:
            raise ValueError(
                f"the model was trained on observations with {missing}, which these lack: "
                "build the env with include_item_ids=True (the catalog ids)"
                if "candidate_ids" in missing
                else f"the model was trained on observations with {missing}, which these lack"
            )
        own = {k: v for k, v in observation.items() if k in self.keys} if self.keys else observation
        for key in self.keys:
            want = tuple(self.model.observation_space[key].shape or ())
            got = tuple(np.shape(own[key]))
            if want and got[-len(want) :] != want:
                raise ValueError(
                    f"observation {key!r} has shape {got}, the model was trained on {want}: "
                    "another catalog or EnvConfig (item_popularity, num_candidates ...)"
                )
        action, state = self.model.predict(own, state, episode_start, deterministic)
        if self.discrete:
            c = int(self.model.action_space.n)
            feats = np.asarray(observation["candidate_features"])
            feats = feats.reshape(*feats.shape[:-1], c, -1)
            assert self.slate_size is not None  # checked in __init__ for Discrete models
            action = discrete_to_slate(feats, np.asarray(action), int(self.slate_size))
        elif self.scores:
            assert self.slate_size is not None  # checked in __init__ for score models
            scores = np.asarray(action, dtype=np.float64)
            batched = scores.ndim == 2
            scores = scores.reshape(-1, scores.shape[-1])
            f = np.asarray(observation["clicked_features_mean"]).shape[-1]
            feats = np.asarray(observation["candidate_features"], dtype=np.float64)
            feats = feats.reshape(len(scores), -1, f)  # (n, C, F)
            if scores.shape[1] != feats.shape[1]:  # the weights mode: score by features
                scores = np.einsum("ncf,nf->nc", feats, scores)
            slates = top_k_slates(scores, int(self.slate_size))
            action = slates if batched else slates[0]
        return np.asarray(action, dtype=np.int64), state

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Saved models do not learn during evaluation."""


def as_slate_policy(policy: Any, slate_size: int | None = None) -> Any:
    """An SB3 model wrapped as SB3SlatePolicy; anything else (an agent) unchanged.

    slate_size: the env's, for models of Discrete, scores or weights actions not saved by
    llm-usersim.
    """
    from stable_baselines3.common.base_class import BaseAlgorithm

    if isinstance(policy, BaseAlgorithm):
        return SB3SlatePolicy(policy, slate_size=slate_size)
    return policy


def detect_sb3_algo(path: str | Path) -> str | None:
    """The algorithm of a saved SB3 zip: our metadata, else SB3's hyperparameters (None)."""
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read("data"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    meta = data.get(METADATA_ATTR)
    if isinstance(meta, dict) and meta.get("algo") in SB3_ALGOS:
        return str(meta["algo"])
    if "clip_range" in data:
        return "ppo"
    if "exploration_rate" in data or "target_update_interval" in data:
        return "dqn"
    if "gae_lambda" in data:
        return "a2c"
    return None


class UntrustedModelError(ValueError):
    """Loading this file would unpickle it (run code from it) and that was not allowed."""


def load_sb3_model(
    path: str | Path,
    algo: str | None = None,
    device: str = "cpu",
    trust: bool = False,
    slate_size: int | None = None,
) -> SB3SlatePolicy:
    """Load a third-party SB3 `.zip` as a slate policy, only when `trust` says so.

    The algorithm is read from the zip (`detect_sb3_algo`) unless given. The zip holds
    cloudpickled parts (spaces, schedules, the policy class): loading it runs code from the
    file, so it is refused unless `trust=True`.

    Args:
        path: the .zip (the suffix may be left out).
        algo: ppo, a2c or dqn to skip detection.
        device: torch device of the policy.
        trust: allow unpickling the file.
        slate_size: items per slate, for Discrete or scores models not saved by llm-usersim.

    Returns:
        SB3SlatePolicy: `predict(obs, deterministic=...)` gives slates (Discrete DQN actions
        are expanded); the SB3 model is `.model`.

    Raises:
        FileNotFoundError: no such file.
        UntrustedModelError: `trust` is False.
        ValueError: not an SB3 model of a known algorithm.

    Example:
        >>> policy = load_sb3_model("downloaded/model.zip", trust=True)  # doctest: +SKIP
        >>> action, _ = policy.predict(obs, deterministic=True)  # doctest: +SKIP
    """
    import stable_baselines3 as sb3
    from stable_baselines3.common.base_class import BaseAlgorithm

    p = Path(path)
    if not p.exists() and p.with_suffix(".zip").exists():
        p = p.with_suffix(".zip")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such SB3 model file")
    if not trust:
        raise UntrustedModelError(
            f"{p} is an SB3 .zip, which is loaded with pickle and can run code from the file; "
            "pass --trust-sb3-zip (trust=True) only for a file you trust"
        )
    if algo is not None and algo.lower() not in SB3_ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; one of {', '.join(SB3_ALGOS)}")
    found = algo.lower() if algo else detect_sb3_algo(p)
    tried = [found] if found else list(SB3_ALGOS)
    errors = []
    for a in tried:
        algorithms: dict[str, type[BaseAlgorithm]] = {
            "ppo": sb3.PPO,
            "a2c": sb3.A2C,
            "dqn": sb3.DQN,
        }
        cls = algorithms[a]
        try:
            model = cls.load(str(p), device=device)
        except Exception as exc:  # SB3 raises many types for a mismatching file
            errors.append(f"{a}: {type(exc).__name__}: {exc}")
            continue
        meta = getattr(model, METADATA_ATTR, None)
        if not isinstance(meta, dict):
            setattr(model, METADATA_ATTR, {"algo": a})
        elif not meta.get("algo"):
            meta["algo"] = a
        return SB3SlatePolicy(model, name=f"{a}:{p.stem}")
    raise ValueError(
        f"{p}: could not be loaded as an SB3 {'/'.join(tried)} model ({'; '.join(errors)})"
    )
