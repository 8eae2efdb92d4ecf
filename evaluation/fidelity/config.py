"""Settings and fixed texts of the fidelity report.

`ValidateConfig` (the settings of `llm-usersim validate`), the keys every report holds
(`REQUIRED_KEYS`), the issue's targets for the embedded default (`TARGETS`) and the note on the
floor of the KL to the truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from evaluation.fidelity.ranking import DEFAULT_POLICIES

DEFAULT_HELDOUT_SEED = 99991
REQUIRED_KEYS: tuple[str, ...] = (
    "click_auc",
    "oracle_click_auc",
    "buy_auc",
    "click_logloss",
    "ece_click",
    "kl_per_slot",
    "kl_floor",
    "floor_click_auc",
    "session_length_ks",
    "kendall_tau",
    "policy_returns",
    "sim2real_ratio",
)
TARGETS: dict[str, tuple[str, float]] = {
    "kl_per_slot": ("<=", 0.02),
    "click_auc_gap": ("<=", 0.01),
    "ece_click": ("<=", 0.01),
    "session_length_ks": ("<=", 0.05),
    "kendall_tau": (">=", 1.0),
    "sim2real_ratio": (">=", 0.9),
}
"""The issue's targets for the embedded default (click_auc_gap = oracle AUC - sim AUC)."""
REAL_LOG_TARGETS: dict[str, tuple[str, float]] = {
    "click_auc_minus_best_baseline": (">=", 0.0),
    "ece_click": ("<=", 0.02),
}
"""Targets on real logs (no ground truth): at least the best baseline's click AUC (popularity,
logistic regression, gradient-boosted trees), and calibrated."""
KL_FLOOR_NOTE = (
    "The ground-truth world is identifiable: a user's initial interests are a deterministic "
    "function of the profile (no hidden draws), and drift and fatigue are deterministic "
    "functions of the slates shown and the responses given, all of which the simulator reads. "
    "A predictor that knows the world's equations therefore reproduces the true probabilities "
    "exactly: kl_floor = 0 and floor_click_auc = oracle_click_auc. The one limit is the "
    "context: a session longer than the simulator's context is read through its sliding window "
    "(profile + recent steps), which forgets older drift; kl_floor_context and "
    "floor_context_click_auc measure that floor (the world's equations fed only what the "
    "window shows) and events_beyond_context the share of events it concerns."
)


@dataclass(frozen=True, kw_only=True)
class ValidateConfig:
    """Settings of `llm-usersim validate`."""

    sim: str | None = None
    """Simulator checkpoint directory (None: the embedded default)."""
    logs: str | None = None
    """Log directory to validate on (None: fresh held-out users of the world)."""
    world: str = "auto"
    """'auto' (the logs' world, else the checkpoint's training world, else the default when no
    logs are given), 'default', 'none', or a JSON file of WorldConfig fields."""
    users: int = 2000
    """Held-out users (fresh users generated; or at most this many held-out log users)."""
    seed: int = DEFAULT_HELDOUT_SEED
    """Seed of the fresh held-out users (and of sampling in the metrics)."""
    policy: str | None = None
    """Logging policy of fresh users (default: the training logs' policy, else 'mixed')."""
    baseline_users: int = 10_000
    """Fresh users the baselines are fitted on (world case without training logs)."""
    warm_users: int = 500
    """Training-part users evaluated as warm users (when the logs are the training logs)."""
    ranking: bool = True
    """Run the policy ranking (needs a world)."""
    policies: tuple[str, ...] = DEFAULT_POLICIES
    """Policies ranked (agents.registry names or SB3 specs)."""
    policy_users: int = 256
    """Users per policy and env in the ranking."""
    policy_envs: int = 128
    """Rows of the ranking's vector envs."""
    ppo: str | None = None
    """A trained policy ('ppo:DIR' written by train-agent) added to the ranking."""
    trust_sb3_zip: bool = False
    """Allow SB3 .zip policies ('ppo:FILE.zip'), which are unpickled (run code) on load."""
    sim2real: bool = False
    """Train PPO on the simulator and on the world (same budget) and compare on the world."""
    ppo_steps: int = 100_000
    """Env steps of each sim2real PPO run."""
    ppo_envs: int = 32
    """Envs of each sim2real PPO run."""
    ppo_seeds: int = 3
    """PPO pairs of sim2real, one per seed (seed, seed + 1, ...): one PPO run's return moves a
    lot with its seed, so the ratio is of the returns averaged over the pairs."""
    pool: int = 256
    """Batch rows of the simulator's free-running sessions."""
    device: str = "cpu"
    """Device of the simulator."""
    progress: bool = False
    """Progress bars and per-section log lines."""

    def __post_init__(self) -> None:
        """Validate ranges."""
        for name in ("users", "policy_users", "policy_envs", "pool", "ppo_envs", "ppo_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("baseline_users", "warm_users", "ppo_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        d = asdict(self)
        d["policies"] = list(self.policies)
        return d
