"""`llm-usersim benchmark`: evaluate baseline agents and saved SB3 models on simulated users.

Every agent meets the same N users (user i is row seed + i of the native vector env, the same
profile and candidate draws for every agent), num_envs at a time in one batched env; learning
agents (bandits, SlateQ) learn online during the run. Reported per agent, with 95% confidence
intervals over users (normal approximation; bootstrap standard error for coverage):

- return: mean episode return; ctr / buy_rate: clicks / purchases per shown item (per user,
  then averaged); session_length: steps until the user left or the time limit.
- diversity: intra-list diversity, 1 - mean pairwise cosine similarity of the item features
  (category one-hot, standardised log price) within a slate, averaged over a user's slates.
- coverage: fraction of the catalog shown at least once to any user.
- novelty: mean -log2 of the shown items' popularity share, where popularity is the clicks per
  item (Laplace-smoothed) logged by a uniformly random policy on other users of the same env
  (seeds seed + 10**9 + i), or read from `--logs`. The `popular` agent is fitted on the same
  clicks.
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from recsim_env.cli import UsageError
from recsim_env.cli._common import progress_enabled, write_json
from simulators.base import Response

HELP = "Evaluate baseline agents and SB3 models on simulated users (table, JSON, CSV, plot)."
DEFAULT_ENV = "LLMUserSim-v0"
DEFAULT_USERS = 200  # the no-argument main job fits in ~2 minutes on 2 CPU cores
LOG_SEED_OFFSET = 10**9
METRICS: tuple[str, ...] = (
    "return",
    "ctr",
    "buy_rate",
    "session_length",
    "diversity",
    "coverage",
    "novelty",
)


def _default_agents() -> str:
    from agents.registry import BASELINES

    return ",".join(BASELINES)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of benchmark."""
    p.add_argument("--env", default=DEFAULT_ENV, help=f"env id (default {DEFAULT_ENV})")
    p.add_argument(
        "--agents",
        default=None,
        help="comma-separated agents: baselines (random, popular, greedy, linucb, thompson, "
        "slateq, text_sim) and SB3 models ('ppo:PATH.zip' or PATH.zip); default: all baselines",
    )
    p.add_argument(
        "--users", type=int, default=DEFAULT_USERS, help="simulated users (one episode each)"
    )
    p.add_argument("--seed", type=int, default=0, help="user i is seeded with seed + i")
    p.add_argument("--json", default=None, help="write the figures as JSON")
    p.add_argument("--csv", default=None, help="write the figures as CSV")
    p.add_argument("--plot", default=None, help="write a bar plot with 95%% CIs (PNG)")
    p.add_argument("--batch", type=int, default=500, help="users simulated together (num_envs)")
    p.add_argument(
        "--logs",
        default=None,
        help="log directory for the popularity counts (default: a random-policy run)",
    )
    p.add_argument(
        "--log-users",
        type=int,
        default=None,
        help="users of the random-policy popularity run (default: --users)",
    )
    p.add_argument("--simulator", default=None, help="LLMUserSim-v0 simulator checkpoint")
    p.add_argument("--device", default=None, help="LLMUserSim-v0 device (cpu, cuda, ...)")


# ----------------------------------------------------------------------------- evaluation


@dataclass
class UserStats:
    """Per-user results of one agent: arrays of length `users`, plus what each user saw."""

    returns: np.ndarray
    clicks: np.ndarray
    buys: np.ndarray
    steps: np.ndarray
    shown: np.ndarray
    diversity_sum: np.ndarray
    novelty_sum: np.ndarray
    seen: sparse.csr_matrix  # (users, num_items) items shown to each user
    seconds: float = 0.0


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


def run_episodes(
    agent: Any,
    vec: Any,
    users: int,
    seed: int,
    novelty: np.ndarray,
    bar: Any = None,
) -> UserStats:
    """Play one episode per user (user i seeded seed + i) and collect per-user statistics.

    Args:
        agent: anything with SB3's `predict`; `update(obs, action, info, next_obs=,
            terminated=)` is called after each step with only the users still in their first
            episode marked in `info["_item_ids"]`.
        vec: a native vector env (NEXT_STEP autoreset); rows are users start + 0..num_envs-1.
        users: number of users.
        seed: seed of user 0.
        novelty: (num_items,) novelty of every item.
        bar: optional tqdm bar, advanced by one per finished user.
    """
    n = vec.num_envs
    num_items = len(novelty)
    out = {
        key: np.zeros(users)
        for key in ("returns", "clicks", "buys", "steps", "shown", "div", "nov")
    }
    seen_rows: list[np.ndarray] = []
    seen_cols: list[np.ndarray] = []
    update = getattr(agent, "update", None)
    t0 = time.perf_counter()
    for start in range(0, users, n):
        obs, _ = vec.reset(seed=seed + start)
        uid = start + np.arange(n)
        alive = uid < users
        while alive.any():
            action, _ = agent.predict(obs, deterministic=True)
            action = np.asarray(action, dtype=np.int64)
            next_obs, reward, term, trunc, info = vec.step(action)
            rows = np.nonzero(alive)[0]
            u = uid[rows]
            items = np.asarray(info["item_ids"])[rows]
            resp = np.asarray(info["responses"])[rows]
            out["returns"][u] += reward[rows]
            out["clicks"][u] += (resp != Response.SKIP).sum(axis=1)
            out["buys"][u] += (resp == Response.BUY).sum(axis=1)
            out["steps"][u] += 1
            out["shown"][u] += items.shape[1]
            # shown items' features, located among the candidates (the env may dedupe actions)
            cand = np.asarray(obs["candidate_ids"])[rows]
            pos = np.argmax(cand[:, None, :] == items[:, :, None], axis=2)
            feats = np.asarray(obs["candidate_features"], dtype=np.float64)[rows]
            feats = feats.reshape(len(rows), cand.shape[1], -1)
            out["div"][u] += slate_diversity(np.take_along_axis(feats, pos[..., None], axis=1))
            out["nov"][u] += novelty[np.clip(items, 0, num_items - 1)].sum(axis=1)
            seen_rows.append(np.repeat(u, items.shape[1]))
            seen_cols.append(items.reshape(-1))
            if update is not None:
                info = dict(info)
                mask = np.asarray(info.get("_item_ids", np.ones(n, dtype=bool)), dtype=bool)
                info["_item_ids"] = mask & alive
                update(obs, action, info, next_obs=next_obs, terminated=term)
            done = (term | trunc) & alive
            if bar is not None:
                bar.update(int(done.sum()))
            alive &= ~(term | trunc)
            obs = next_obs
    rr, cc = np.concatenate(seen_rows), np.concatenate(seen_cols)
    seen = sparse.csr_matrix((np.ones(len(rr)), (rr, cc)), shape=(users, num_items))
    seen.data[:] = 1.0
    return UserStats(
        returns=out["returns"],
        clicks=out["clicks"],
        buys=out["buys"],
        steps=out["steps"],
        shown=out["shown"],
        diversity_sum=out["div"],
        novelty_sum=out["nov"],
        seen=seen,
        seconds=time.perf_counter() - t0,
    )


def _mean_ci(x: np.ndarray) -> tuple[float, list[float]]:
    """Mean and normal-approximation 95% CI over users."""
    x = np.asarray(x, dtype=np.float64)
    m = float(x.mean())
    if len(x) < 2:
        return m, [m, m]
    half = 1.96 * float(x.std(ddof=1)) / np.sqrt(len(x))
    return m, [m - half, m + half]


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
    half = 1.96 * float(cov.std(ddof=1))
    return [max(point - half, 0.0), min(point + half, 1.0)]


def summarize(stats: UserStats, seed: int = 0) -> dict[str, Any]:
    """The per-agent figures of the JSON output (means and 95% CIs)."""
    shown = np.maximum(stats.shown, 1)
    steps = np.maximum(stats.steps, 1)
    res: dict[str, Any] = {}
    m, ci = _mean_ci(stats.returns)
    res["return_mean"], res["return_ci95"] = m, ci
    per_user = {
        "ctr": stats.clicks / shown,
        "buy_rate": stats.buys / shown,
        "session_length": stats.steps,
        "diversity": stats.diversity_sum / steps,
        "novelty": stats.novelty_sum / shown,
    }
    for key, values in per_user.items():
        m, ci = _mean_ci(values)
        res[key], res[f"{key}_ci95"] = m, ci
    covered = np.asarray(stats.seen.sum(axis=0)).reshape(-1) > 0
    res["coverage"] = float(covered.mean())
    res["coverage_ci95"] = _coverage_ci(stats.seen, seed)
    res["users"] = len(stats.returns)
    res["seconds"] = round(stats.seconds, 3)
    return res


# ----------------------------------------------------------------------------- outputs


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
    from simulators.logs import atomic_write

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


def write_plot(path: str | Path, results: dict[str, dict[str, Any]], title: str) -> None:
    """Bar plot per metric with 95% CI error bars (matplotlib, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from simulators.logs import atomic_write

    names = list(results)
    fig = Figure(figsize=(4 * 4, 2 * 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4).reshape(-1)
    colors = [f"C{i % 10}" for i in range(len(names))]
    for ax, metric in zip(axes, METRICS):
        vals = [_value(results[n], metric) for n in names]
        means = np.array([v[0] for v in vals])
        err = np.array([[m - v[1][0], v[1][1] - m] for m, v in zip(means, vals)]).T
        ax.bar(range(len(names)), means, yerr=np.maximum(err, 0), capsize=3, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric)
    axes[-1].axis("off")
    fig.suptitle(title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


# ----------------------------------------------------------------------------- command


def _make_vec(args: argparse.Namespace, num_envs: int) -> Any:
    import gymnasium as gym

    import recsim_env  # noqa: F401  (registers the envs)

    kwargs = {}
    if args.simulator is not None:
        kwargs["simulator"] = args.simulator
    if args.device is not None:
        kwargs["device"] = args.device
    try:
        return gym.make_vec(
            args.env, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
        )
    except gym.error.Error as exc:
        raise UsageError(f"cannot make env {args.env!r}: {exc}") from exc
    except (ImportError, OSError, TypeError) as exc:
        hint = " (try --env ParametricUserSim-v0)" if args.env != "ParametricUserSim-v0" else ""
        raise UsageError(f"cannot build env {args.env!r}: {exc}{hint}") from exc


def _popularity(args: argparse.Namespace, vec: Any, num_items: int, log_users: int) -> np.ndarray:
    """Clicks per catalog item: from --logs, else from a random-policy run on other users."""
    from agents.popularity import click_counts_from_logs, collect_click_counts

    if args.logs is None:
        return collect_click_counts(vec, log_users, args.seed + LOG_SEED_OFFSET, num_items)
    from simulators.logs import read_logs

    logs = read_logs(args.logs)
    counts = click_counts_from_logs(logs)
    table = getattr(getattr(vec.unwrapped, "simulator", None), "items_table", None)
    if callable(table):  # map by item id onto the env's catalog
        index = logs.item_index()
        env_ids = [str(i) for i in table()["item_id"]]
        return np.array([counts[index[i]] if i in index else 0.0 for i in env_ids])
    if len(counts) != num_items:
        raise UsageError(f"--logs has {len(counts)} items, the env's catalog {num_items}")
    return counts


def _parse_agents(spec: str | None) -> tuple[list[str], bool]:
    explicit = spec is not None
    names = [s.strip() for s in (spec or _default_agents()).split(",") if s.strip()]
    if not names:
        raise UsageError("--agents is empty")
    return list(dict.fromkeys(names)), explicit


def _single_threaded_blas() -> Any:
    """Limit numpy's BLAS to one thread (the agents' matrices are small).

    On a shared 2-core machine, threaded BLAS made SlateQ over 10x slower.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _evaluate(
    args: argparse.Namespace, vec: Any, names: list[str], explicit: bool, log_users: int
) -> dict[str, dict[str, Any]]:
    """Build every agent (skipping unavailable defaults) and evaluate it on the users."""
    from agents.registry import BASELINES, AgentUnavailable, make_agent

    num_items = int(vec.single_observation_space["candidate_ids"].high.max()) + 1
    counts = _popularity(args, vec, num_items, log_users)
    novelty = item_novelty(counts)
    agents: list[tuple[str, Any]] = []
    for name in names:
        try:
            kwargs = {"counts": counts} if name == "popular" else {}
            agent = make_agent(name, vec, seed=args.seed, **kwargs)
        except AgentUnavailable as exc:
            if explicit:
                raise UsageError(f"agent {name!r} is unavailable on {args.env}: {exc}") from exc
            print(f"note: skipping {name} on {args.env}: {exc}")
            continue
        label = name if name in BASELINES else str(getattr(agent, "name", name))
        agents.append((label, agent))
        if getattr(agent, "backend", None) == "minilm":
            print(f"note: {name} uses all-MiniLM-L6-v2 embeddings")
    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(
        total=len(agents) * args.users,
        desc="benchmark",
        unit="user",
        disable=not progress_enabled(),
    )
    for name, agent in agents:
        bar.set_postfix_str(name)
        stats = run_episodes(agent, vec, args.users, args.seed, novelty, bar)
        results[name] = summarize(stats, args.seed)
    bar.close()
    return results


def run(args: argparse.Namespace) -> int:
    """Evaluate every agent, print the table and write the requested files."""
    if args.users < 1:
        raise UsageError(f"--users must be >= 1, got {args.users}")
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    names, explicit = _parse_agents(args.agents)
    log_users = args.users if args.log_users is None else args.log_users
    if log_users < 1:
        raise UsageError(f"--log-users must be >= 1, got {log_users}")
    vec = _make_vec(args, min(args.users, args.batch))
    try:
        with _single_threaded_blas():
            results = _evaluate(args, vec, names, explicit, log_users)
    finally:
        vec.close()
    print(f"{args.env}: {args.users} users, seed {args.seed} (mean ± 95% CI half-width)")
    print(format_table(results))
    write_json(
        args.json, {"agents": results, "env": args.env, "users": args.users, "seed": args.seed}
    )
    if args.csv:
        write_csv(args.csv, results)
    if args.plot:
        write_plot(args.plot, results, f"{args.env}, {args.users} users, seed {args.seed}")
    for label, path in (("JSON", args.json), ("CSV", args.csv), ("plot", args.plot)):
        if path:
            print(f"wrote {label} to {path}")
    return 0
