"""The ground-truth world: a parametric user model whose every probability is known exactly.

Design choice for fidelity measurement: the world's state is *identifiable* from what a simulator
sees. A user's initial interests are a deterministic function of the profile (no hidden noise),
and interest drift and fatigue are deterministic functions of the slates shown and the responses
given. So a simulator that sees the profile and the history can, in principle, match the true
probabilities exactly: the KL floor is 0 (up to the context window, see `simulators.tokenization`).

Per slate of k items (item i in slot j) for a user with interests u and fatigue f:
  - utility   s_j = a_int * u[topic_i] + a_q * quality_i + pos_bias * j
  - no-click  s_0 = no_click + a_fat * f
  - choice    multinomial logit over {no click, slot 1..k}: at most one click per slate
  - buy | click  sigmoid(buy_bias + b_int * u[topic_i] + b_q * quality_i - ps * log(price_i))
    with price sensitivity ps from age band and region
  - fatigue   f' = fatigue_decay * f + [no click] - fatigue_relief * [buy], floored at 0
  - drift     on a click u[topic] += drift * (u_max - u[topic]) (twice on a buy)
  - leave     sigmoid(leave_bias + leave_fatigue * f' - leave_click * [click] - leave_buy * [buy])
Responses are sampled slot by slot from p(r_j | r_<j); `response_probs` gives the marginals.

Behaviours are data (`WorldConfig.behaviours`, default skip, click, buy): after a click, each
deeper level follows the one before it with the buy model's form and its own intercept
(`funnel_bias` for the levels between click and the deepest, `buy_bias` for the deepest), so a
world of skip, click, cart, buy is a config change. "buy" in the formulas above means the
deepest level of a set of three or more; a click drifts interest once per level reached.

The config, the state and the equations above stay in one module: the world is one model, and
its code is checked against these formulas.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from simulators.base import StepOutcome, sample_categorical
from simulators.behaviours import SKIP, BehaviourSet
from simulators.catalog import PROFILE_PAD, ProfileEncoder, item_feature_matrix

TOPICS: tuple[str, ...] = (
    "jazz", "rock", "hiphop", "classical", "cooking", "baking", "fitness", "yoga", "travel",
    "camping", "gaming", "anime", "scifi", "fantasy", "gardening", "photography", "fashion",
    "sneakers", "finance", "history", "poetry", "chess", "cycling", "coffee", "pets", "comics",
    "knitting", "astronomy", "theatre", "football",
)  # fmt: skip
NOUNS: tuple[str, ...] = ("album", "guide", "kit", "set", "course", "book", "collection", "pack")
STYLES: tuple[str, ...] = (
    "vintage", "modern", "deluxe", "compact", "illustrated", "limited", "family", "pocket",
)  # fmt: skip
QUALITY_WORDS: tuple[str, ...] = (
    "budget",
    "basic",
    "everyday",
    "popular",
    "premium",
    "award-winning",
)
AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+")
GENDERS: tuple[str, ...] = ("f", "m")
REGIONS: tuple[str, ...] = ("north", "south", "east", "west")
PROFILE_FIELDS: tuple[str, ...] = ("age_band", "gender", "region", "interests")


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """Parameters of the ground-truth world (catalog and behaviour)."""

    num_items: int = 500
    """Catalog size."""
    num_topics: int = 20
    """Number of topics (at most len(TOPICS))."""
    seed: int = 0
    """Seed of the catalog and of the demographic interest offsets (not of users)."""
    population_size: int = 20_000
    """Users in the population the env samples episodes from."""
    a_int: float = 1.3
    """Weight of interest in click utility."""
    a_q: float = 0.8
    """Weight of item quality in click utility."""
    pos_bias: float = -0.25
    """Utility change per slot further down the slate."""
    no_click: float = 1.5
    """Utility of not clicking."""
    a_fat: float = 0.35
    """Fatigue's weight on the no-click utility."""
    behaviours: tuple[str, ...] = ("skip", "click", "buy")
    """Engagement levels, shallowest first (see `simulators.behaviours`)."""
    funnel_bias: tuple[float, ...] = ()
    """Intercepts of the levels between click and the deepest (one per such level), in the
    deeper-level logit of `buy_bias`'s form."""
    buy_bias: float = -1.6
    """Intercept of the logit of the deepest level given the one before (buy given click)."""
    b_int: float = 0.6
    """Interest weight in the buy logit."""
    b_q: float = 0.8
    """Quality weight in the buy logit."""
    fatigue_decay: float = 0.7
    """Fatigue kept from the previous step."""
    fatigue_relief: float = 0.5
    """Fatigue removed by a purchase."""
    drift: float = 0.2
    """Fraction of the gap to u_max closed when an item of a topic is clicked."""
    u_max: float = 3.0
    """Ceiling of interest drift."""
    leave_bias: float = -2.6
    """Intercept of the leave logit."""
    leave_fatigue: float = 0.9
    """Fatigue weight in the leave logit."""
    leave_click: float = 0.6
    """Reduction of the leave logit after a click."""
    leave_buy: float = 0.4
    """Further reduction after a purchase."""

    def __post_init__(self) -> None:
        """Validate ranges."""
        if not 1 <= self.num_topics <= len(TOPICS):
            raise ValueError(f"num_topics must be in [1, {len(TOPICS)}], got {self.num_topics}")
        if self.num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {self.num_items}")
        if self.population_size < 1:
            raise ValueError(f"population_size must be >= 1, got {self.population_size}")
        object.__setattr__(self, "behaviours", tuple(self.behaviours))
        object.__setattr__(self, "funnel_bias", tuple(float(b) for b in self.funnel_bias))
        levels = BehaviourSet(self.behaviours)
        between = max(0, levels.size - 3)
        if len(self.funnel_bias) != between:
            raise ValueError(
                f"funnel_bias needs one intercept per level between click and the deepest "
                f"({between} for {list(self.behaviours)}), got {len(self.funnel_bias)}"
            )
        for name in (
            "a_int",
            "a_q",
            "pos_bias",
            "no_click",
            "a_fat",
            "buy_bias",
            "b_int",
            "b_q",
            "fatigue_decay",
            "fatigue_relief",
            "drift",
            "u_max",
            "leave_bias",
            "leave_fatigue",
            "leave_click",
            "leave_buy",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, strict: bool = True) -> WorldConfig:
        """Inverse of `to_dict`.

        Args:
            d: field values (lists are read as tuples).
            strict: refuse unknown fields (a typo in a user's JSON); False skips them (older
                metadata written by another version).

        Raises:
            ValueError: not a mapping, an unknown field (strict), or a value out of range.
        """
        if not isinstance(d, dict):
            raise ValueError(
                f"a world config must be a JSON object of fields, got {type(d).__name__}"
            )
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown and strict:
            raise ValueError(f"unknown world config fields {unknown}; allowed: {', '.join(names)}")
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names
        }
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"bad world config: {exc}") from None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class ParametricUserModel:
    """The ground-truth world as a batched user simulator with exact probabilities.

    Args:
        config: world parameters.
        capacity: initial number of rows (grows on demand).
    """

    def __init__(self, config: WorldConfig | None = None, capacity: int = 1) -> None:
        """Build the catalog and demographic tables from `config.seed`."""
        self.config = cfg = config or WorldConfig()
        rng = np.random.default_rng(cfg.seed)
        t = cfg.num_topics
        self.topic_names = TOPICS[:t]
        self.num_items = cfg.num_items
        self.behaviours = BehaviourSet(cfg.behaviours)
        self.item_topic = rng.integers(0, t, cfg.num_items)
        self.item_quality = np.clip(rng.normal(0.0, 0.6, cfg.num_items), -1.5, 1.5)
        self.item_price = np.round(np.exp(rng.normal(np.log(20.0), 0.7, cfg.num_items)), 2)
        self.item_log_price = np.log(self.item_price)
        self._item_style = rng.integers(0, len(STYLES), cfg.num_items)
        self._item_noun = rng.integers(0, len(NOUNS), cfg.num_items)
        self.age_offset = rng.normal(0.0, 0.35, (len(AGE_BANDS), t))
        self.gender_offset = rng.normal(0.0, 0.25, (len(GENDERS), t))
        self.region_offset = rng.normal(0.0, 0.25, (len(REGIONS), t))
        self.age_price_sens = np.array([0.9, 0.7, 0.5, 0.45, 0.65])
        self.region_price_sens = np.array([0.0, 0.1, -0.1, 0.15])
        self.profile_encoder = ProfileEncoder(
            [f"age_band={a}" for a in AGE_BANDS]
            + [f"gender={g}" for g in GENDERS]
            + [f"region={r}" for r in REGIONS]
            + [f"interests={n}" for n in self.topic_names],
            PROFILE_FIELDS,
            slots=6,
        )
        self._interest_token = np.array(
            [self.profile_encoder.index[f"interests={n}"] for n in self.topic_names]
        )
        self.item_features = item_feature_matrix(self.items_table())
        self.population = self.sample_profiles(
            cfg.population_size, np.random.default_rng(cfg.seed + 1)
        )
        self._alloc(capacity)

    # ----------------------------------------------------------------- catalog and profiles
    def item_titles(self) -> list[str]:
        """Short text titles from quality, style and topic (text carries topic and quality)."""
        qbin = np.digitize(self.item_quality, [-0.9, -0.4, 0.0, 0.4, 0.9])
        return [
            f"{QUALITY_WORDS[q]} {STYLES[s]} {self.topic_names[t]} {NOUNS[n]}"
            for q, s, t, n in zip(qbin, self._item_style, self.item_topic, self._item_noun)
        ]

    def items_table(self) -> pd.DataFrame:
        """The items table of the log format (internal index == position == item_id order)."""
        return pd.DataFrame(
            {
                "item_id": [f"i{i}" for i in range(self.num_items)],
                "title": self.item_titles(),
                "category": [self.topic_names[t] for t in self.item_topic],
                "price": self.item_price,
            }
        )

    def sample_profiles(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw n user profiles: (n, 6) token indices into `profile_encoder.vocab`."""
        enc = self.profile_encoder
        t = self.config.num_topics
        out = np.full((n, enc.slots), PROFILE_PAD, dtype=np.int64)
        out[:, 0] = [enc.index[f"age_band={AGE_BANDS[a]}"] for a in rng.integers(0, 5, n)]
        out[:, 1] = [enc.index[f"gender={GENDERS[g]}"] for g in rng.integers(0, 2, n)]
        out[:, 2] = [enc.index[f"region={REGIONS[r]}"] for r in rng.integers(0, 4, n)]
        counts = rng.choice([1, 2, 3], size=n, p=[0.3, 0.4, 0.3])
        for i in range(n):
            topics = np.sort(rng.choice(t, counts[i], replace=False))
            out[i, 3 : 3 + counts[i]] = self._interest_token[topics]
        return out

    def users_table(self, user_ids: list[str], profiles: np.ndarray) -> pd.DataFrame:
        """The users table of the log format for the given profiles."""
        vocab = self.profile_encoder.vocab
        rows = []
        for uid, prof in zip(user_ids, profiles):
            toks = [vocab[i] for i in prof if i >= 0]
            fields: dict[str, list[str]] = {f: [] for f in PROFILE_FIELDS}
            for tok in toks:
                field, value = tok.split("=", 1)
                fields[field].append(value)
            rows.append({"user_id": uid, **{f: "|".join(v) for f, v in fields.items()}})
        return pd.DataFrame(rows, columns=["user_id", *PROFILE_FIELDS])

    def _decode_profiles(self, profiles: np.ndarray) -> tuple[np.ndarray, ...]:
        """Profile token indices -> (age, gender, region, interest multi-hot (n, T))."""
        vocab = self.profile_encoder.vocab
        n = len(profiles)
        age = np.zeros(n, dtype=np.int64)
        gender = np.zeros(n, dtype=np.int64)
        region = np.zeros(n, dtype=np.int64)
        interests = np.zeros((n, self.config.num_topics))
        topic_index = {name: i for i, name in enumerate(self.topic_names)}
        for i, prof in enumerate(profiles):
            for tok_id in prof:
                if tok_id < 0:
                    continue
                field, value = vocab[tok_id].split("=", 1)
                if field == "age_band":
                    age[i] = AGE_BANDS.index(value)
                elif field == "gender":
                    gender[i] = GENDERS.index(value)
                elif field == "region":
                    region[i] = REGIONS.index(value)
                else:
                    interests[i, topic_index[value]] = 1.0
        return age, gender, region, interests

    def initial_state(self, profiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic initial interests (n, T) and price sensitivity (n,) of profiles."""
        age, gender, region, interests = self._decode_profiles(profiles)
        u = (
            1.5 * interests
            + self.age_offset[age]
            + self.gender_offset[gender]
            + self.region_offset[region]
        )
        ps = self.age_price_sens[age] + self.region_price_sens[region]
        return u, ps

    # ----------------------------------------------------------------- batched state
    def _alloc(self, capacity: int) -> None:
        t = self.config.num_topics
        self.capacity = capacity
        self.interest = np.zeros((capacity, t))
        self.fatigue = np.zeros(capacity)
        self.price_sens = np.zeros(capacity)

    def ensure_capacity(self, capacity: int) -> None:
        """Grow the row arrays (existing rows are kept)."""
        if capacity <= self.capacity:
            return
        old = (self.interest, self.fatigue, self.price_sens, self.capacity)
        self._alloc(capacity)
        n = old[3]
        self.interest[:n], self.fatigue[:n], self.price_sens[:n] = old[0], old[1], old[2]

    def close(self) -> None:
        """Nothing to release (numpy state); part of the simulator contract."""

    def start_sessions(self, rows: np.ndarray, profiles: np.ndarray) -> None:
        """Begin fresh sessions for `rows` with profiles (len(rows), 6)."""
        rows = np.asarray(rows, dtype=np.int64)
        self.ensure_capacity(int(rows.max()) + 1 if len(rows) else 0)
        u, ps = self.initial_state(profiles)
        self.interest[rows] = u
        self.price_sens[rows] = ps
        self.fatigue[rows] = 0.0

    def _slot_params(self, rows: np.ndarray, slates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Choice probabilities P_j (B, k) (MNL incl. no-click) and deeper-level probabilities.

        Per deeper level: the probability of reaching it from the level before (B, k, R - 2).
        """
        cfg = self.config
        k = slates.shape[1]
        topic = self.item_topic[slates]  # (B, k)
        u = np.take_along_axis(self.interest[rows], topic, axis=1)  # (B, k)
        s = cfg.a_int * u + cfg.a_q * self.item_quality[slates] + cfg.pos_bias * np.arange(k)
        s0 = cfg.no_click + cfg.a_fat * self.fatigue[rows]
        m = np.maximum(s.max(axis=1), s0)
        e = np.exp(s - m[:, None])
        e0 = np.exp(s0 - m)
        choice = e / (e0 + e.sum(axis=1))[:, None]
        quality, sens = self.item_quality[slates], self.price_sens[rows, None]
        log_price = self.item_log_price[slates]
        biases = (*cfg.funnel_bias, cfg.buy_bias)[: self.behaviours.size - 2]
        deeper = [
            _sigmoid(
                bias
                + cfg.b_int * u
                + cfg.b_q * quality
                - sens * log_price
                + 2.5  # centre: log(20) * typical sensitivity
            )
            for bias in biases
        ]
        if not deeper:
            return choice, np.zeros((*choice.shape, 0))
        return choice, np.stack(deeper, axis=-1)

    @staticmethod
    def _levels(engage: np.ndarray, deeper: np.ndarray) -> np.ndarray:
        """Per-level probabilities (..., R) of a slot engaged with probability `engage` (...).

        Its deeper levels follow with the conditional probabilities `deeper` (..., R - 2).
        """
        out = [1.0 - engage]
        reach = engage
        for lvl in range(deeper.shape[-1]):
            out.append(reach * (1.0 - deeper[..., lvl]))
            reach = reach * deeper[..., lvl]
        out.append(reach)
        return np.stack(out, axis=-1)

    def response_probs(self, rows: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """Exact marginal probabilities of every response: (B, k, R), rows sum to 1."""
        choice, deeper = self._slot_params(np.asarray(rows), np.asarray(slates))
        return self._levels(choice, deeper)

    item_side_channels: tuple[str, ...] = ()
    """The world's items are their attributes: there is no side channel to take away."""

    def without_item_side(
        self, items: np.ndarray, channel: str
    ) -> contextlib.AbstractContextManager[None]:
        """Refused: the world reads no item side information (`item_side_channels` is empty)."""
        raise ValueError(
            f"the ground-truth world has no item side-information channel {channel!r} "
            "(its items are their attributes)"
        )

    def score_slates(self, rows: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """p(r_j | state, slate, earlier slots skipped): (n, k, R); nothing advances."""
        slates = np.asarray(slates, dtype=np.int64)
        return self.conditional_response_probs(rows, slates, np.zeros_like(slates))

    def conditional_response_probs(
        self, rows: np.ndarray, slates: np.ndarray, responses: np.ndarray
    ) -> np.ndarray:
        """Exact p(r_j | state, slate, r_<j) along given responses: (B, k, R)."""
        choice, deeper = self._slot_params(np.asarray(rows), np.asarray(slates))
        return self._conditionals(choice, deeper, responses)

    @classmethod
    def _conditionals(
        cls, choice: np.ndarray, deeper: np.ndarray, responses: np.ndarray
    ) -> np.ndarray:
        engaged = np.asarray(responses) != SKIP
        clicked_before = np.cumsum(engaged, axis=1) - engaged
        remaining = 1.0 - (np.cumsum(choice, axis=1) - choice)
        c = np.where(clicked_before > 0, 0.0, choice / np.maximum(remaining, 1e-12))
        c = np.clip(c, 0.0, 1.0)
        return cls._levels(c, deeper)

    def _top_level(self, responses: np.ndarray) -> np.ndarray:
        """(B,) bool: a slot reached the deepest level ("bought"; never for two-level sets)."""
        top = self.behaviours.deepest
        return (responses == top).any(axis=1) if top >= 2 else np.zeros(len(responses), bool)

    def leave_probability(self, rows: np.ndarray, responses: np.ndarray) -> np.ndarray:
        """p(leave) after `responses` (B, k), without changing state."""
        cfg = self.config
        clicked = (responses != SKIP).any(axis=1)
        bought = self._top_level(responses)
        f = self._next_fatigue(rows, clicked, bought)
        return _sigmoid(
            cfg.leave_bias
            + cfg.leave_fatigue * f
            - cfg.leave_click * clicked
            - cfg.leave_buy * bought
        )

    def _next_fatigue(
        self, rows: np.ndarray, clicked: np.ndarray, bought: np.ndarray
    ) -> np.ndarray:
        cfg = self.config
        f = cfg.fatigue_decay * self.fatigue[rows] + (~clicked) - cfg.fatigue_relief * bought
        return np.maximum(f, 0.0)

    def step(
        self,
        rows: np.ndarray,
        slates: np.ndarray,
        uniforms: np.ndarray | None = None,
        forced_responses: np.ndarray | None = None,
        forced_leave: np.ndarray | None = None,
    ) -> StepOutcome:
        """Answer slates (B, k) for rows, sampling with uniforms (B, k + 1), and update state.

        `forced_responses` / `forced_leave` replay logged behaviour instead of sampling (the
        returned probabilities are then those of the logged events).
        """
        rows = np.asarray(rows, dtype=np.int64)
        slates = np.asarray(slates, dtype=np.int64)
        b, k = slates.shape
        if uniforms is None and (forced_responses is None or forced_leave is None):
            raise ValueError("step() needs uniforms unless responses and leave are both forced")
        choice, deeper = self._slot_params(rows, slates)
        if forced_responses is not None:
            responses = np.asarray(forced_responses, dtype=np.int64)
            probs = self._conditionals(choice, deeper, responses)
        else:
            assert uniforms is not None
            responses = np.zeros((b, k), dtype=np.int64)
            probs = np.zeros((b, k, self.behaviours.size))
            clicked = np.zeros(b, dtype=bool)
            remaining = np.ones(b)
            for j in range(k):
                c = np.where(
                    clicked, 0.0, np.clip(choice[:, j] / np.maximum(remaining, 1e-12), 0, 1)
                )
                probs[:, j] = self._levels(c, deeper[:, j])
                responses[:, j] = sample_categorical(probs[:, j], uniforms[:, j])
                clicked |= responses[:, j] != SKIP
                remaining = remaining - choice[:, j]
        leave_prob = self.leave_probability(rows, responses)
        if forced_leave is not None:
            leave = np.asarray(forced_leave, dtype=bool)
        else:
            assert uniforms is not None
            leave = uniforms[:, k] < leave_prob
        # drift toward consumed topics, once per level reached (a buy counts twice)
        weight = responses.astype(np.float64)
        if weight.any():
            topic = self.item_topic[slates]
            for j in range(k):
                w = weight[:, j]
                hit = np.nonzero(w)[0]
                if len(hit):
                    r, tp = rows[hit], topic[hit, j]
                    gap = self.config.u_max - self.interest[r, tp]
                    self.interest[r, tp] += (1.0 - (1.0 - self.config.drift) ** w[hit]) * gap
        clicked_any = (responses != SKIP).any(axis=1)
        self.fatigue[rows] = self._next_fatigue(rows, clicked_any, self._top_level(responses))
        return StepOutcome(responses, probs, leave, leave_prob)
