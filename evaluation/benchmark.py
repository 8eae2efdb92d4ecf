"""The benchmark: every agent meets the same users; per-agent metrics with 95% intervals.

Every agent meets the same N users (user i is the single env reset with seed + i: the same
profile and candidate draws for every agent) through the shared episode runner
(`recsim_env.episodes`); learning agents (bandits, SlateQ) learn online during the run. Reported
per agent, with 95% confidence intervals over users (normal approximation; bootstrap standard
error for coverage):

- return: mean episode return; ctr / buy_rate: clicks / purchases (engagement past a click)
  per shown item (per user, then averaged); session_length: steps until the user left or the
  time limit.
- diversity: intra-list diversity, 1 - mean pairwise cosine similarity of the item features
  (category one-hot, standardised log price) within a slate, averaged over a user's slates.
- coverage: fraction of the catalog shown at least once to any user.
- novelty: mean -log2 of the shown items' popularity share, where popularity is the clicks per
  item (Laplace-smoothed) logged by a uniformly random policy on other users of the same env
  (seeds seed + 10**9 + i), or read from logs. The `popular` agent is fitted on the same
  clicks.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from evaluation.distributed import RayConfig
from evaluation.stats import Z95, mean_ci95
from recsim_env.episodes import EpisodeStats, make_episode_env, run_episodes

log = logging.getLogger(__name__)

DEFAULT_ENV = "LLMUserSim-v0"
DEFAULT_USERS = 200
"""Users of the no-argument main job."""
LOG_SEED_OFFSET = 10**9
"""Seed offset of the random-policy users whose clicks give the popularity counts."""
METRICS: tuple[str, ...] = (
    "return",
    "ctr",
    "buy_rate",
    "session_length",
    "diversity",
    "coverage",
    "novelty",
)


@dataclass(frozen=True, kw_only=True)
class BenchmarkConfig:
    """What to benchmark and on whom."""

    env: str = DEFAULT_ENV
    """Env id."""
    agents: tuple[str, ...] = ()
    """Agent names or SB3 specs (`agents.registry.make_agent`); empty: every baseline."""
    users: int = DEFAULT_USERS
    """Users (one episode each)."""
    seed: int = 0
    """User i is seeded seed + i."""
    batch: int = 500
    """Users simulated together (rows of the vector env)."""
    logs: str | None = None
    """Log directory for the popularity counts (None: a random-policy run)."""
    log_users: int | None = None
    """Users of the random-policy popularity run (None: `users`)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Env arguments (simulator=, device=, ...)."""
    trust_sb3_zip: bool = False
    """Allow SB3 .zip agents ('ppo:FILE.zip'), which are unpickled (run code) on load."""

    def __post_init__(self) -> None:
        """Validate ranges."""
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.log_users is not None and self.log_users < 1:
            raise ValueError(f"log_users must be >= 1, got {self.log_users}")


def slate_diversity(features: np.ndarray) -> np.ndarray:
    """Intra-list diversity of slates: features (n, k, F) -> (n,) 1 - mean pairwise cosine."""
    f = np.asarray(features, dtype=np.float64)
    k = f.shape[1]
    if k < 2:
        return np.zeros(f.shape[0])
    unit = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    gram = np.einsum("nid,njd->nij", unit, unit)
    off = (gram.sum(axis=(1, 2)) - np.trace(gram, axis1=1, axis2=2)) / (k * (k - 1))
    return 1.0 - off


def item_novelty(counts: np.ndarray) -> np.ndarray:
    """-log2 of each item's Laplace-smoothed share of the clicks: (num_items,)."""
    counts = np.asarray(counts, dtype=np.float64)
    return -np.log2((counts + 1.0) / (counts.sum() + len(counts)))


def simulator_feature_count(vector_env: Any) -> int:
    """The item features of a vector env's simulator itself (without env-added columns)."""
    from agents.base import env_view

    return int(np.asarray(env_view(vector_env).simulator.item_features).shape[1])


class SlateRecorder:
    """Collects what every user was shown: diversity and novelty sums, and the items seen."""

    def __init__(self, users: int, novelty: np.ndarray, num_features: int | None = None) -> None:
        """Per-user accumulators for `users` users.

        `num_features`: the leading item-feature columns diversity is computed on, the
        simulator's own (category, price; `simulator_feature_count`): an env built with
        `item_popularity` observes one more, which would change diversity for the same slates.
        None: all observed columns.
        """
        self.novelty = novelty
        self.num_features = num_features
        self.diversity_sum = np.zeros(users)
        self.novelty_sum = np.zeros(users)
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self.users = users

    def __call__(
        self,
        users: np.ndarray,
        obs: dict[str, np.ndarray],
        items: np.ndarray,
        responses: np.ndarray,
    ) -> None:
        """Record one step of the users that stepped (a `StepObserver`)."""
        # shown items' features, located among the candidates (the env may dedupe actions)
        cand = np.asarray(obs["candidate_ids"])
        pos = np.argmax(cand[:, None, :] == items[:, :, None], axis=2)
        feats = np.asarray(obs["candidate_features"], dtype=np.float64)
        feats = feats.reshape(len(users), cand.shape[1], -1)[..., : self.num_features]
        self.diversity_sum[users] += slate_diversity(
            np.take_along_axis(feats, pos[..., None], axis=1)
        )
        num_items = len(self.novelty)
        self.novelty_sum[users] += self.novelty[np.clip(items, 0, num_items - 1)].sum(axis=1)
        self._rows.append(np.repeat(users, items.shape[1]))
        self._cols.append(items.reshape(-1))

    def state(self) -> dict[str, np.ndarray]:
        """The per-user sums and the (user, item) pairs shown, as plain arrays."""
        return {
            "diversity_sum": self.diversity_sum,
            "novelty_sum": self.novelty_sum,
            "rows": np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64),
            "cols": np.concatenate(self._cols) if self._cols else np.zeros(0, np.int64),
        }

    def absorb(self, part: dict[str, np.ndarray], first: int) -> None:
        """Add another recorder's `state()` whose user 0 is user `first` here."""
        n = len(part["diversity_sum"])
        self.diversity_sum[first : first + n] += part["diversity_sum"]
        self.novelty_sum[first : first + n] += part["novelty_sum"]
        self._rows.append(np.asarray(part["rows"]) + first)
        self._cols.append(np.asarray(part["cols"]))

    def seen(self) -> sparse.csr_matrix:
        """(users, num_items) 1 where the item was shown to the user."""
        rr = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
        cc = np.concatenate(self._cols) if self._cols else np.zeros(0, np.int64)
        m = sparse.csr_matrix((np.ones(len(rr)), (rr, cc)), shape=(self.users, len(self.novelty)))
        m.data[:] = 1.0
        return m


def _coverage_ci(seen: sparse.csr_matrix, seed: int, resamples: int = 200) -> list[float]:
    """95% CI of catalog coverage: coverage ± 1.96 bootstrap (over users) standard errors.

    Percentile intervals would miss the estimate: the coverage of a resample (fewer distinct
    users) is never above the full sample's.
    """
    users = seen.shape[0]
    rng = np.random.default_rng(seed)
    weights = np.stack(
        [np.bincount(rng.integers(0, users, users), minlength=users) for _ in range(resamples)],
        axis=1,
    )  # (users, resamples)
    cov = ((seen.T @ weights) > 0).mean(axis=0)
    point = float((np.asarray(seen.sum(axis=0)).reshape(-1) > 0).mean())
    half = Z95 * float(cov.std(ddof=1))
    return [max(point - half, 0.0), min(point + half, 1.0)]


def summarize(stats: EpisodeStats, recorder: SlateRecorder, seed: int = 0) -> dict[str, Any]:
    """The per-agent figures of the JSON output (means and 95% CIs)."""
    shown = np.maximum(stats.shown, 1)
    steps = np.maximum(stats.steps, 1)
    res: dict[str, Any] = {}
    m, ci = mean_ci95(stats.returns)
    res["return_mean"], res["return_ci95"] = m, ci
    per_user = {
        "ctr": stats.engaged / shown,
        "buy_rate": stats.deeper / shown,
        "session_length": stats.steps,
        "diversity": recorder.diversity_sum / steps,
        "novelty": recorder.novelty_sum / shown,
    }
    for key, values in per_user.items():
        m, ci = mean_ci95(values)
        res[key], res[f"{key}_ci95"] = m, ci
    seen = recorder.seen()
    covered = np.asarray(seen.sum(axis=0)).reshape(-1) > 0
    res["coverage"] = float(covered.mean())
    res["coverage_ci95"] = _coverage_ci(seen, seed)
    res["users"] = len(stats.returns)
    res["seconds"] = round(stats.seconds, 3)
    return res


def popularity_counts(cfg: BenchmarkConfig, vec: Any) -> np.ndarray:
    """Clicks per catalog item: from `cfg.logs`, else from a random-policy run on other users."""
    from agents.popularity import click_counts_from_logs, collect_click_counts

    num_items = int(vec.unwrapped.simulator.num_items)
    if cfg.logs is None:
        users = cfg.users if cfg.log_users is None else cfg.log_users
        return collect_click_counts(vec, users, cfg.seed + LOG_SEED_OFFSET, num_items)
    from simulators.logs import read_logs

    logs = read_logs(cfg.logs)
    counts = click_counts_from_logs(logs)
    index = logs.item_index()  # map by item id onto the env's catalog
    env_ids = [str(i) for i in vec.unwrapped.simulator.items_table()["item_id"]]
    return np.array([counts[index[i]] if i in index else 0.0 for i in env_ids])


def build_agents(
    cfg: BenchmarkConfig, vec: Any, counts: np.ndarray
) -> tuple[list[tuple[str, str, Any]], list[str]]:
    """(name, label, agent) of every agent that can be built on vec, and the skip notes.

    Raises:
        ValueError: an explicitly named agent is unavailable on this env.
    """
    from agents.registry import BASELINES, AgentUnavailable

    explicit = bool(cfg.agents)
    agents: list[tuple[str, str, Any]] = []
    notes: list[str] = []
    for name in dict.fromkeys(cfg.agents or BASELINES):
        try:
            agent = make_benchmark_agent(name, vec, cfg, counts)
        except AgentUnavailable as exc:
            if explicit:
                raise ValueError(f"agent {name!r} is unavailable on {cfg.env}: {exc}") from exc
            notes.append(f"note: skipping {name} on {cfg.env}: {exc}")
            continue
        label = name if name in BASELINES else str(getattr(agent, "name", name))
        agents.append((name, label, agent))
    return agents, notes


def make_benchmark_agent(name: str, vec: Any, cfg: BenchmarkConfig, counts: np.ndarray) -> Any:
    """`agents.registry.make_agent` with the benchmark's seed (and counts for `popular`)."""
    from agents.registry import make_agent

    kwargs = {"counts": counts} if name == "popular" else {}
    return make_agent(name, vec, seed=cfg.seed, trust_sb3_zip=cfg.trust_sb3_zip, **kwargs)


def run_benchmark(
    cfg: BenchmarkConfig,
    on_agent: Callable[[str], None] | None = None,
    on_done: Callable[[int], None] | None = None,
    ray: RayConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """Build every agent (skipping unavailable defaults) and evaluate it on the same users.

    Args:
        cfg: the benchmark.
        on_agent: called with each agent's label before it runs (progress).
        on_done: called with the number of users finished (progress).
        ray: run on Ray actors (`evaluation.benchmark_ray.run_benchmark_on_ray`): the same
            figures.

    Returns:
        {agent label: figures (see `summarize`)}.

    Raises:
        ValueError: an explicitly named agent is unavailable on this env.
        DistributedError: (with `ray`) the cluster cannot do the work.
    """
    if ray is not None:
        from evaluation.benchmark_ray import run_benchmark_on_ray

        return run_benchmark_on_ray(cfg, ray, on_agent, on_done)
    vec = make_episode_env(cfg.env, min(cfg.users, cfg.batch), **cfg.env_kwargs)
    try:
        counts = popularity_counts(cfg, vec)
        novelty = item_novelty(counts)
        agents, notes = build_agents(cfg, vec, counts)
        for note in notes:
            log.warning("%s", note)
        results: dict[str, dict[str, Any]] = {}
        for _name, label, agent in agents:
            if on_agent is not None:
                on_agent(label)
            recorder = SlateRecorder(cfg.users, novelty, simulator_feature_count(vec))
            stats = run_episodes(
                agent, vec, cfg.users, cfg.seed, observer=recorder, on_done=on_done
            )
            results[label] = summarize(stats, recorder, cfg.seed)
    finally:
        vec.close()
    return results


def _value(res: dict[str, Any], metric: str) -> tuple[float, list[float]]:
    key = "return_mean" if metric == "return" else metric
    return res[key], res[f"{metric}_ci95"]


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: mean ± half-width of the 95% CI per metric."""
    digits = {"return": 2, "session_length": 2}
    header = ["agent", *METRICS]
    lines = []
    for name, res in results.items():
        cells = [name]
        for metric in METRICS:
            m, (lo, hi) = _value(res, metric)
            d = digits.get(metric, 3)
            cells.append(f"{m:.{d}f} ± {max(hi - m, m - lo):.{d}f}")
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def write_csv(path: str | Path, results: dict[str, dict[str, Any]]) -> None:
    """One row per agent: each metric with its CI bounds."""
    from simulators.atomic import atomic_write

    cols = ["agent"]
    for metric in METRICS:
        cols += [metric, f"{metric}_ci95_lo", f"{metric}_ci95_hi"]
    cols += ["users", "seconds"]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for name, res in results.items():
                row: list[Any] = [name]
                for metric in METRICS:
                    m, (lo, hi) = _value(res, metric)
                    row += [m, lo, hi]
                w.writerow([*row, res["users"], res["seconds"]])

    atomic_write(path, write)


METRIC_LABELS: dict[str, tuple[str, str]] = {
    "return": ("Episode return", "reward per user"),
    "ctr": ("Click rate", "clicks per item shown"),
    "buy_rate": ("Purchase rate", "purchases per item shown"),
    "session_length": ("Session length", "slates per user"),
    "diversity": ("Intra-slate diversity", "1 - mean pairwise cosine similarity"),
    "coverage": ("Catalog coverage", "share of the catalog shown"),
    "novelty": ("Novelty", "bits: -log2 of the items' popularity share"),
}
"""Title and unit of every metric in plots."""


def write_plot(path: str | Path, results: dict[str, dict[str, Any]], title: str) -> None:
    """One panel per metric: each agent's mean with its 95% CI, agents in order of return.

    Dots and whiskers rather than bars: the axis of each panel spans the agents' intervals (a
    bar would have to start at zero and flatten differences of diversity, coverage and
    novelty); the last cell of the grid says how to read the figure.
    """
    from evaluation.plotting import agent_label, colours, new_figure, save_png

    names = sorted(results, key=lambda n: results[n]["return_mean"])
    fig = new_figure(14, 0.5 * len(names) + 5)
    axes = fig.subplots(2, 4, sharey=True).reshape(-1)
    palette = dict(zip(names, colours(len(names))))
    y = np.arange(len(names))
    for ax, metric in zip(axes, METRICS):
        for i, n in enumerate(names):
            m, (lo, hi) = _value(results[n], metric)
            ax.errorbar(
                m,
                i,
                xerr=[[max(m - lo, 0.0)], [max(hi - m, 0.0)]],
                fmt="o",
                color=palette[n],
                ecolor=palette[n],
                capsize=3,
                markersize=6,
            )
        title_text, unit = METRIC_LABELS[metric]
        ax.set_title(title_text)
        ax.set_xlabel(unit)
        ax.set_yticks(y, [agent_label(n) for n in names])
        ax.tick_params(axis="y", labelleft=ax in (axes[0], axes[4]))
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.15)
    note = axes[-1]
    note.axis("off")
    users = next(iter(results.values()))["users"] if results else 0
    note.text(
        0.0,
        1.0,
        "How to read this figure\n\n"
        f"Dots: mean over {users} users.\n"
        "Whiskers: 95% confidence\n"
        "interval (normal approximation;\n"
        "coverage: bootstrap over users).\n"
        "Agents sorted by mean return;\n"
        "every agent met the same users.",
        va="top",
        ha="left",
        fontsize=9,
        transform=note.transAxes,
    )
    fig.suptitle(title + " (mean ± 95% CI)")
    save_png(fig, path)
