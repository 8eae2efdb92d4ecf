"""Model card of a simulator trained on ground-truth-world logs: simulated vs true behaviour.

`python -m evaluation.model_card CKPT [--users N] [--seed S]` rolls the same fresh users (a seed
not used in training) through the world and through the simulator under the same logging policy
and writes CKPT/MODEL_CARD.md with the training provenance and the measured rates.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recsim_env.config import EnvConfig
from recsim_env.log_generation import POLICY_DESCRIPTIONS, generate, summarize
from simulators.atomic import atomic_write_text
from simulators.gpt2_user import GPT2UserSimulator
from simulators.parametric import ParametricUserModel, WorldConfig


def compare_rates(
    ckpt: str | Path, users: int = 5000, seed: int = 424242, policy: str | None = None
) -> dict:
    """Click rate, buy rate, session length and per-position click rate: world vs simulator.

    Both are rolled out under `policy` (default: the training logs' policy).
    """
    sim = GPT2UserSimulator.from_pretrained(ckpt, capacity=1024)
    training = sim.extra.get("training", {})
    policy = policy or training.get("log_meta", {}).get("policy") or "mixed"
    log_meta = training.get("log_meta", {})
    world = ParametricUserModel(WorldConfig.from_dict(log_meta.get("world", {}), strict=False))
    cfg, _ = EnvConfig.from_kwargs(log_meta.get("env", {}))
    t0 = time.time()
    true = summarize(generate(users, policy, seed, cfg, world))
    t1 = time.time()
    simulated = summarize(generate(users, policy, seed, cfg, world, simulator=sim))
    t2 = time.time()
    return {
        "users": users,
        "seed": seed,
        "policy": policy,
        "true": true,
        "simulated": simulated,
        "seconds_world": round(t1 - t0, 1),
        "seconds_simulator": round(t2 - t1, 1),
    }


def render(ckpt: Path, rates: dict, command: str) -> str:
    """The model card text."""
    cfg = json.loads((ckpt / "config.json").read_text())
    meta = json.loads((ckpt / "simulator_config.json").read_text())
    training = meta["extra"].get("training", {})
    log_meta = training.get("log_meta", {})
    train_cfg = training.get("train_config", {})
    size = sum(p.stat().st_size for p in ckpt.iterdir() if p.is_file())
    t, s = rates["true"], rates["simulated"]
    lines = [
        "# Model card: embedded default GPT-2 user simulator",
        "",
        "## Data",
        f"Ground-truth-world logs (`simulators/parametric.py`, WorldConfig defaults): "
        f"{log_meta.get('users')} users, one session each, logging policy "
        f"`{log_meta.get('policy')}` ({POLICY_DESCRIPTIONS.get(log_meta.get('policy'), '?')}), "
        f"seed {log_meta.get('seed')}. "
        f"{training.get('train_users')} users trained on, the rest validate (split by user)."
        + (
            f" Training continued from the checkpoint `{train_cfg['init_sim']}`"
            " (see TRAINING.txt for the whole chain)."
            if train_cfg.get("init_sim")
            else ""
        ),
        "",
        "## Exact command",
        "```bash",
        command,
        "```",
        "",
        "## Config",
        f"GPT-2: {cfg['n_layer']} layers, {cfg['n_head']} heads, {cfg['n_embd']} dims, context "
        f"{cfg['n_positions']} tokens, vocabulary {cfg['vocab_size']}, untied head, no dropout. "
        f"Simulator: {json.dumps(meta['simulator'])}. Files: {size / 1e6:.1f} MB (safetensors + JSON).",
        f"Training: {json.dumps(training.get('train_config', {}))}",
        "",
        "## Privacy",
        *privacy_lines(meta["extra"].get("privacy"), training.get("train_users")),
        "",
        "## Validation",
        f"Best validation loss (mean NLL per user token): {training.get('best_val_loss', float('nan')):.4f} "
        f"(responses {training.get('val_response_nll', float('nan')):.4f}, leave "
        f"{training.get('val_leave_nll', float('nan')):.4f}) at step {training.get('step')}.",
        "",
        f"## Simulated vs true ({rates['users']} fresh users, seed {rates['seed']}, policy `{rates['policy']}`)",
        "| | true (world) | simulated (GPT-2) |",
        "|---|---|---|",
        f"| click rate (per shown item) | {t['click_rate']:.4f} | {s['click_rate']:.4f} |",
        f"| buy rate (per shown item) | {t['buy_rate']:.4f} | {s['buy_rate']:.4f} |",
        f"| mean session length (steps) | {t['mean_session_length']:.2f} | {s['mean_session_length']:.2f} |",
        f"| click rate per position | {t['click_rate_per_position']} | {s['click_rate_per_position']} |",
        "",
        "Reproduce: `python -m evaluation.model_card simulators/default`. Full fidelity figures: "
        "`llm-usersim validate`.",
        "",
    ]
    return "\n".join(lines)


def privacy_lines(record: dict | None, train_users: int | None) -> list[str]:
    """What the card says about privacy: the DP guarantee and what it does not cover, or none.

    Args:
        record: the checkpoint's `privacy` record (`simulators.training.dp`), None without DP.
        train_users: users trained on.
    """
    if record is None:
        return [
            "Trained **without differential privacy**: no formal guarantee. The weights are "
            f"a summary of the {train_users} training users' sessions, and "
            "`population.safetensors` holds real training users' profiles (the users episodes "
            "are drawn from). Measure what leaks with `llm-usersim validate --logs "
            "TRAINING_LOGS` (section Privacy: membership-inference attack AUC)."
        ]
    return [
        f"Trained with **user-level differential privacy** (DP-SGD, the user with all their "
        f"sessions is the protected unit): **epsilon = {record['epsilon']:.3f}, delta = "
        f"{record['delta']:.3g}** over {record['steps']} steps (target epsilon "
        f"{record['target_epsilon']:g}; {record['accountant']}). Noise multiplier "
        f"{record['noise_multiplier']:.3f}, each user's gradient clipped to "
        f"{record['max_grad_norm']:g}, users sampled at rate {record['sample_rate']:.4g} "
        f"({record['expected_users_per_step']} per step on average of "
        f"{record['training_users']}). Population: {record['population']}. Every catalog "
        "item counts as known (no per-item bit from the logs).",
        "",
        "Not covered by the guarantee:",
        "",
        *[f"- {item}" for item in record["not_covered"]],
    ]


def main() -> None:
    """CLI of the model card."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("ckpt")
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--seed", type=int, default=424242)
    p.add_argument("--policy", default=None, help="logging policy (default: the training logs')")
    p.add_argument("--command", default="(see simulators/default/TRAINING.txt)")
    args = p.parse_args()
    ckpt = Path(args.ckpt)
    rates = compare_rates(ckpt, args.users, args.seed, args.policy)
    atomic_write_text(ckpt / "MODEL_CARD.md", render(ckpt, rates, args.command))
    atomic_write_text(ckpt / "model_card.json", json.dumps(rates, indent=1) + "\n")
    print((ckpt / "MODEL_CARD.md").read_text())


if __name__ == "__main__":
    main()
