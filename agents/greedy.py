"""GreedyAgent: myopic, fills the slate slot by slot with the best expected one-step reward.

The agent needs a response model, p(response | user state, slate), for the *current* state of
every user it serves:

- `OracleResponseModel` reads the true probabilities from the simulator behind the env
  (`simulator.response_probs(rows, slates)`, a side-effect-free query). On
  ParametricUserSim-v0 this is the "oracle-greedy" upper reference: it sees the user's hidden
  interests and fatigue, which no honest agent can. Batch row i of the observations must be row
  `rows[i]` of the simulator, which holds for the single env (row 0), the native vector env
  (row i) and SB3's DummyVecEnv (row 0 of each sub-env's simulator).
- `PeekResponseModel` asks a simulator that can only step, such as the GPT-2 user, through
  `step(rows, slates, peek=True)` (its own probabilities, nothing advanced): on LLMUserSim-v0
  greedy ranks by what the GPT-2 user itself predicts.
- `WorldModelResponseModel` is the honest variant: a private copy of the ground-truth world whose
  user state is rebuilt from the observation alone (profile, then the visible history replayed
  with the logged responses). Exact while the session is at most `history_length` steps old,
  approximate afterwards (interest drift from older clicks is forgotten). It is the fallback for
  simulators that cannot be queried at all.

Position bias exists in both simulators, so the best item goes to the top slot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from agents.base import SlateAgent, env_parts
from simulators.base import Response

ProbsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(batch positions (m,), item-id slates (m, j)) -> marginal response probs (m, j, 3)."""


class OracleResponseModel:
    """True response probabilities read from the simulators behind an env (see module doc).

    Args:
        simulators: one per batch row (the same object repeated for a native vector env); each
            must have a side-effect-free `response_probs(rows, slates) -> (B, k, 3)`.
        rows: (n,) the simulator row of each batch row.
    """

    def __init__(self, simulators: list[Any], rows: np.ndarray) -> None:
        """Store the simulator of every batch row."""
        self.simulators = list(simulators)
        self.rows = np.asarray(rows, dtype=np.int64)
        self._groups: list[tuple[Any, np.ndarray]] = []
        for sim in {id(s): s for s in self.simulators}.values():
            mask = np.array([s is sim for s in self.simulators])
            self._groups.append((sim, mask))

    def bind(self, obs: dict[str, np.ndarray]) -> ProbsFn:
        """A probability function for the users of this (batched) observation."""
        n = np.asarray(obs["candidate_ids"]).shape[0]
        if n != len(self.rows):
            raise ValueError(
                f"oracle built for {len(self.rows)} env rows got a batch of {n} observations; "
                "build the agent from the env it acts in"
            )

        def probs(batch_idx: np.ndarray, slates: np.ndarray) -> np.ndarray:
            if len(self._groups) == 1:
                return self._query(self._groups[0][0], self.rows[batch_idx], slates)
            out = np.zeros((*slates.shape, 3))
            for sim, mask in self._groups:
                sel = mask[batch_idx]
                if sel.any():
                    out[sel] = self._query(sim, self.rows[batch_idx[sel]], slates[sel])
            return out

        return probs

    def _query(self, sim: Any, rows: np.ndarray, slates: np.ndarray) -> np.ndarray:
        return sim.response_probs(rows, slates)


class PeekResponseModel(OracleResponseModel):
    """The simulator's own probabilities from `step(rows, slates, peek=True)` (the GPT-2 user).

    A peek computes p(response | current state, slate) without advancing the session, one slate
    per row per call, so queries are sent in rounds of distinct rows. The probabilities a step
    returns are conditional on the responses sampled in earlier slots; only for one-item slates
    are they the marginals, so this model answers one-item slates only (`search="rank"`).
    """

    def _query(self, sim: Any, rows: np.ndarray, slates: np.ndarray) -> np.ndarray:
        if slates.shape[1] != 1:
            raise ValueError("peeked probabilities are marginals only for one-item slates")
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        first = np.searchsorted(srt, srt, side="left")
        occurrence = np.empty(len(rows), dtype=np.int64)
        occurrence[order] = np.arange(len(rows)) - first
        if len(rows) and hasattr(sim, "cache") and hasattr(sim, "model"):
            # the GPT-2 user: all candidates of all rows in one forward (same probabilities)
            from simulators.candidate_scoring import candidate_probs

            uniq, inv = np.unique(rows, return_inverse=True)
            grid = np.zeros((len(uniq), int(occurrence.max()) + 1), dtype=np.int64)
            grid[inv, occurrence] = slates[:, 0]
            return candidate_probs(sim, uniq, grid)[inv, occurrence][:, None, :]
        out = np.zeros((len(rows), 1, 3))
        for r in range(int(occurrence.max()) + 1 if len(rows) else 0):
            sel = np.nonzero(occurrence == r)[0]
            out[sel] = sim.step(rows[sel], slates[sel], peek=True).response_probs
        return out


def _can_peek(sim: Any) -> bool:
    """True when sim.step takes `peek=` (probabilities without advancing)."""
    import inspect

    step = getattr(sim, "step", None)
    try:
        return callable(step) and "peek" in inspect.signature(step).parameters
    except (TypeError, ValueError):
        return False


class WorldModelResponseModel:
    """Ground-truth world probabilities with the user state rebuilt from the observation.

    Args:
        world: a `ParametricUserModel` (only its parameters are used; a private copy holds
            the rebuilt states, so the env's own simulator is never touched).
        profile_vocab: the env's profile vocabulary (`simulator.profile_encoder.vocab`), to map
            the observation's multi-hot profile onto the world's tokens.
        item_ids: the env's item ids in catalog order (`items_table()["item_id"]`), to map
            catalog indices onto the world's; None when the catalogs are the same.
        slate_size: items per slate (the history is read slate by slate).
        titles: the env's item titles in catalog order, checked against the world's so that a
            simulator trained on another world is refused; None skips the check.

    Raises:
        ValueError: when an env item is unknown to the world or its title differs.
    """

    def __init__(
        self,
        world: Any,
        profile_vocab: list[str],
        item_ids: list[str] | None,
        slate_size: int,
        titles: list[str] | None = None,
    ) -> None:
        """Build the private world copy and the index maps."""
        from simulators.parametric import ParametricUserModel

        self.world = ParametricUserModel(world.config)
        self.slate_size = slate_size
        enc = self.world.profile_encoder
        self._profile_map = np.array([enc.index.get(t, -1) for t in profile_vocab], dtype=np.int64)
        if item_ids is None:
            self._item_map = np.arange(self.world.num_items)
        else:
            world_index = {iid: i for i, iid in enumerate(self.world.items_table()["item_id"])}
            missing = [i for i in item_ids if i not in world_index]
            if missing:
                raise ValueError(
                    f"{len(missing)} env items (e.g. {missing[0]!r}) are not in the world's catalog"
                )
            self._item_map = np.array([world_index[i] for i in item_ids], dtype=np.int64)
        if titles is not None:
            world_titles = np.asarray(self.world.item_titles(), dtype=object)[self._item_map]
            if list(world_titles) != [str(t) for t in titles]:
                raise ValueError("the env's item titles differ from the world's (another catalog)")

    def _profiles(self, profile: np.ndarray) -> np.ndarray:
        slots = self.world.profile_encoder.slots
        out = np.full((len(profile), slots), -1, dtype=np.int64)
        for i, row in enumerate(np.asarray(profile)):
            toks = self._profile_map[np.nonzero(row)[0]]
            toks = toks[toks >= 0][:slots]
            out[i, : len(toks)] = toks
        return out

    def bind(self, obs: dict[str, np.ndarray]) -> ProbsFn:
        """Rebuild every user's state from obs, then answer probability queries."""
        world, k = self.world, self.slate_size
        n = np.asarray(obs["candidate_ids"]).shape[0]
        rows = np.arange(n)
        world.start_sessions(rows, self._profiles(obs["profile"]))
        hist_items = np.asarray(obs["history_items"], dtype=np.int64).reshape(n, -1, k)
        hist_resp = np.asarray(obs["history_responses"], dtype=np.int64).reshape(n, -1, k)
        for t in range(hist_items.shape[1]):
            live = np.nonzero((hist_items[:, t] >= 0).all(axis=1))[0]
            if len(live):
                world.step(
                    live,
                    self._item_map[hist_items[live, t]],
                    forced_responses=np.clip(hist_resp[live, t], Response.SKIP, Response.BUY),
                    forced_leave=np.zeros(len(live), dtype=bool),
                )

        def probs(batch_idx: np.ndarray, slates: np.ndarray) -> np.ndarray:
            return world.response_probs(batch_idx, self._item_map[slates])

        return probs


def expected_slot_rewards(
    probs: np.ndarray, click_reward: float = 1.0, buy_reward: float = 3.0
) -> np.ndarray:
    """Expected reward of every slot from marginal probs (..., 3) (a buy is also a click)."""
    return (
        click_reward * probs[..., Response.CLICK]
        + (click_reward + buy_reward) * probs[..., Response.BUY]
    )


class GreedyAgent(SlateAgent):
    """Myopic slate builder under a response model.

    `search="rank"` (default) scores every candidate alone in the top slot (its expected reward
    click_reward * P(click) + (click_reward + buy_reward) * P(buy)) and shows the k best, best
    first. `search="greedy"` fills the slate slot by slot, each time adding the unused
    candidate that maximises the expected reward of the partial slate (so competition between
    items and position bias enter too). On ParametricUserSim-v0 "rank" earns the higher
    *episode* return (42.99 vs 41.17 mean over 2000 users, paired difference 1.8 ± 1.4): the
    slot-by-slot search trades the top item's click appeal for purchase value lower down.

    Args:
        response_model: an object with `bind(obs) -> probs(batch_idx, item_slates)`
            (`OracleResponseModel`, `WorldModelResponseModel`).
        slate_size: items per slate.
        click_reward / buy_reward: the env's reward weights.
        search: "rank" (default) or "greedy".
        seed: unused (deterministic).
    """

    name = "greedy"

    def __init__(
        self,
        response_model: Any,
        slate_size: int,
        click_reward: float = 1.0,
        buy_reward: float = 3.0,
        search: str = "rank",
        seed: int | None = None,
    ) -> None:
        """Store the model and reward weights."""
        super().__init__(slate_size, seed)
        if search not in ("rank", "greedy"):
            raise ValueError(f"search must be 'rank' or 'greedy', got {search!r}")
        self.response_model = response_model
        self.click_reward = click_reward
        self.buy_reward = buy_reward
        self.search = search

    @classmethod
    def from_env(
        cls, env: Any, mode: str = "auto", world: Any = None, **kwargs: Any
    ) -> GreedyAgent:
        """Greedy for a given env (single, native vector, or SB3 DummyVecEnv).

        Args:
            env: the env the agent will act in.
            mode: "oracle" (the env's simulator's own probabilities: `response_probs`, else
                `step(peek=True)`), "world" (the ground-truth world, state rebuilt from
                observations) or "auto" (oracle when the simulator can be queried, else world).
            world: the ParametricUserModel for "world" mode (default: the default world).
            **kwargs: passed to the constructor (search=...).

        Raises:
            ValueError: when the chosen mode cannot work with this env.
        """
        sims, rows, cfg = env_parts(env)
        k = len(getattr(env, "single_action_space", env.action_space).nvec)
        rewards = {
            "click_reward": getattr(cfg, "click_reward", 1.0),
            "buy_reward": getattr(cfg, "buy_reward", 3.0),
        }
        sim = sims[0]
        search = kwargs.get("search", "rank")
        queryable = callable(getattr(sim, "response_probs", None))
        # The GPT-2 user offers step(..., peek=True) (its own probabilities at the current KV
        # cache, nothing advanced): enough for one-item queries, i.e. search="rank".
        # TODO(gpt2): a side-effect-free response_probs(rows, slates) -> (B, k, 3) of marginals
        # on GPT2UserSimulator would make it "queryable" here and allow search="greedy" too.
        peekable = not queryable and search == "rank" and _can_peek(sim)
        if mode == "oracle" or (mode == "auto" and (queryable or peekable)):
            if queryable:
                return cls(OracleResponseModel(sims, rows), k, **rewards, **kwargs)
            if peekable:
                return cls(PeekResponseModel(sims, rows), k, **rewards, **kwargs)
            raise ValueError(
                f"{type(sim).__name__} has neither response_probs(rows, slates) nor "
                "step(..., peek=True) (the latter only with search='rank')"
            )
        if mode not in ("auto", "world"):
            raise ValueError(f"mode must be 'auto', 'oracle' or 'world', got {mode!r}")
        from simulators.parametric import ParametricUserModel

        world = world if world is not None else ParametricUserModel()
        vocab = list(sim.profile_encoder.vocab)
        item_ids = titles = None
        if callable(getattr(sim, "items_table", None)):
            table = sim.items_table()
            item_ids = [str(i) for i in table["item_id"]]
            titles = table["title"].tolist() if "title" in table.columns else None
        elif int(sim.num_items) != world.num_items:
            raise ValueError("the env's catalog differs from the world's")
        model = WorldModelResponseModel(world, vocab, item_ids, k, titles)
        return cls(model, k, **rewards, **kwargs)

    def act(self, obs: dict[str, np.ndarray], deterministic: bool) -> np.ndarray:
        """Build each slate slot by slot (or rank candidates), best item in the top slot."""
        ids = np.asarray(obs["candidate_ids"], dtype=np.int64)
        n, c = ids.shape
        probs = self.response_model.bind(obs)
        bidx = np.repeat(np.arange(n), c)
        if self.search == "rank":
            p = probs(bidx, ids.reshape(-1, 1))
            value = expected_slot_rewards(p, self.click_reward, self.buy_reward).reshape(n, c)
            return np.argsort(-value, axis=1, kind="stable")[:, : self.slate_size]
        chosen = np.zeros((n, 0), dtype=np.int64)
        used = np.zeros((n, c), dtype=bool)
        for _ in range(self.slate_size):
            prefix = np.repeat(np.take_along_axis(ids, chosen, axis=1), c, axis=0)
            slates = np.concatenate([prefix, ids.reshape(-1, 1)], axis=1)
            p = probs(bidx, slates)
            value = expected_slot_rewards(p, self.click_reward, self.buy_reward).sum(axis=1)
            value = np.where(used, -np.inf, value.reshape(n, c))
            best = np.argmax(value, axis=1)
            used[np.arange(n), best] = True
            chosen = np.concatenate([chosen, best[:, None]], axis=1)
        return chosen
