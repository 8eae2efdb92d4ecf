"""GPT2UserSimulator: the GPT-2 user model as a batched simulator with a persistent KV cache.

One `step` answers a slate for every row of the batch with k + 1 forwards of a few tokens each
(the slate and the first re-stated item, then one (response, next item) pair per slot, then the
last response to read the leave decision). Responses are sampled on the device from
env-supplied uniforms, so rows never influence each other. History is never re-encoded: keys and
values stay in a preallocated cache. When a row's context is full it is refilled with its profile
and its last `window_steps` steps (the documented sliding-window scheme; training windows long
sessions the same way), so memory is bounded whatever the episode length.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from simulators.base import NUM_RESPONSES, StepOutcome
from simulators.catalog import ProfileEncoder, item_feature_matrix
from simulators.logs import atomic_write, atomic_write_text
from simulators.tokenization import (
    CONT,
    PAD,
    RESPONSE_TOKENS,
    ROLE_CONTROL,
    ROLE_RESPONSE,
    ROLE_RESTATED,
    ROLE_SLATE,
    START,
    UNK_ITEM,
    SimTokenizer,
    step_block_length,
    text_buckets,
)
from simulators.user_lm import SimulatorConfig, StaticKVCache, UserLM, make_gpt2_config

DEFAULT_SIMULATOR_DIR = Path(__file__).resolve().parent / "default"
CHECKPOINT_FILES = (
    "config.json",
    "model.safetensors",
    "population.safetensors",
    "vocab.json",
    "simulator_config.json",
)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A simulator checkpoint is missing, corrupt or inconsistent; the message names the file."""


def item_text_matrix(titles: list[str], cfg: SimulatorConfig) -> torch.Tensor:
    """(N, text_max_words) hashed word buckets of item titles (0 pads)."""
    out = torch.zeros(len(titles), cfg.text_max_words, dtype=torch.long)
    for i, title in enumerate(titles):
        b = text_buckets(title or "", cfg.text_buckets, cfg.text_max_words)
        out[i, : len(b)] = torch.tensor(b, dtype=torch.long)
    return out


def build_user_lm(
    tokenizer: SimTokenizer,
    items: pd.DataFrame,
    sim_config: SimulatorConfig,
    size: str = "small",
    base_model: str | None = None,
    item_known: np.ndarray | None = None,
) -> UserLM:
    """A fresh UserLM for a catalog: from a named size, or from pretrained GPT-2 weights.

    `base_model` ('gpt2', a hub name, or a local directory) loads `GPT2LMHeadModel.from_pretrained`
    and resizes its embeddings to our vocabulary; the network keeps its pretrained blocks.
    """
    if base_model:
        gpt2 = GPT2LMHeadModel.from_pretrained(base_model)
        gpt2.resize_token_embeddings(tokenizer.vocab_size)
        gpt2.config.tie_word_embeddings = False
        gpt2.lm_head.weight = torch.nn.Parameter(gpt2.lm_head.weight.detach().clone())
        if gpt2.config.n_positions < sim_config.context_length:
            raise ValueError(
                f"base model has n_positions {gpt2.config.n_positions} < context_length "
                f"{sim_config.context_length}"
            )
    else:
        gpt2 = GPT2LMHeadModel(
            make_gpt2_config(size, tokenizer.vocab_size, sim_config.context_length)
        )
    feats = torch.from_numpy(item_feature_matrix(items))
    text = item_text_matrix(
        items.get("title", pd.Series([""] * len(items))).fillna("").astype(str).tolist(), sim_config
    )
    known = (
        torch.ones(len(items), dtype=torch.bool)
        if item_known is None
        else torch.from_numpy(item_known)
    )
    return UserLM(gpt2, sim_config, feats, text, known)


class GPT2UserSimulator:
    """The GPT-2 user as a `BatchedUserSimulator` (see module docstring)."""

    def __init__(
        self,
        model: UserLM,
        tokenizer: SimTokenizer,
        profile_encoder: ProfileEncoder,
        population: np.ndarray,
        items: pd.DataFrame,
        extra: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        capacity: int = 1,
    ) -> None:
        """Assemble a simulator from its parts (use `from_pretrained` to load one)."""
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype]
        self.model = model.to(self.device).eval()
        if self.dtype != torch.float32:
            self.model.gpt2.to(self.dtype)
        self.tokenizer = tokenizer
        self.profile_encoder = profile_encoder
        self.population = np.asarray(population, dtype=np.int64)
        self.items = items.reset_index(drop=True)
        self.extra = dict(extra or {})
        self.num_items = tokenizer.num_items
        self.slate_size_max = None
        self.item_features = item_feature_matrix(self.items)
        self.sim_config: SimulatorConfig = model.sim_config
        self.prefix_length = 1 + tokenizer.profile_slots
        self._item_base = torch.tensor(tokenizer.item_base, device=self.device)
        self._resp_tokens = torch.as_tensor(RESPONSE_TOKENS, device=self.device)
        self.capacity = 0
        self.cache: StaticKVCache | None = None
        self._alloc(max(capacity, 1))

    # --------------------------------------------------------------------------- catalog
    def items_table(self) -> pd.DataFrame:
        """The catalog this simulator knows (item_id, title, category, price)."""
        return self.items.copy()

    # --------------------------------------------------------------------------- state
    def _alloc(self, capacity: int) -> None:
        cfg = self.model.config
        c = self.sim_config.context_length
        self.capacity = capacity
        self.cache = StaticKVCache(
            cfg.n_layer, capacity, cfg.n_head, c, cfg.n_embd // cfg.n_head, self.device, self.dtype
        )
        z = lambda fill: torch.full((capacity, c), fill, dtype=torch.long, device=self.device)
        self.tok_ids, self.tok_roles, self.tok_slots, self.tok_items = z(PAD), z(0), z(0), z(-1)
        self.steps_done = torch.zeros(capacity, dtype=torch.long, device=self.device)

    def ensure_capacity(self, capacity: int) -> None:
        """Grow the batch (drops all sessions: call before starting any)."""
        if capacity > self.capacity:
            self._alloc(capacity)

    def close(self) -> None:
        """Release the cache (and GPU memory)."""
        self.cache = None
        self.capacity = 0
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _item_tokens(self, items: torch.Tensor) -> torch.Tensor:
        known = self.model.item_known[items]
        return torch.where(known, self._item_base + items, torch.full_like(items, UNK_ITEM))

    @torch.inference_mode()
    def start_sessions(self, rows: np.ndarray, profiles: np.ndarray) -> None:
        """Encode BOS + profile for rows into the cache (the rest of each row is discarded)."""
        rows_np = np.asarray(rows, dtype=np.int64)
        if len(rows_np) == 0:
            return
        if self.cache is None or rows_np.max() >= self.capacity:
            self._alloc(max(int(rows_np.max()) + 1, self.capacity))
        n, p = len(rows_np), self.prefix_length
        ids = np.empty((n, p), dtype=np.int64)
        roles = np.empty((n, p), dtype=np.int64)
        for i, prof in enumerate(np.asarray(profiles)):
            ids[i], roles[i] = self.tokenizer.prefix(prof)
        rows_t = torch.as_tensor(rows_np, device=self.device)
        self._encode_rows(
            rows_t,
            torch.as_tensor(ids, device=self.device),
            torch.as_tensor(roles, device=self.device),
            torch.zeros(n, p, dtype=torch.long, device=self.device),
            torch.full((n, p), -1, dtype=torch.long, device=self.device),
        )
        self.steps_done[rows_t] = 0

    def _encode_rows(
        self,
        rows: torch.Tensor,
        ids: torch.Tensor,
        roles: torch.Tensor,
        slots: torch.Tensor,
        items: torch.Tensor,
    ) -> None:
        """Encode whole sequences (n, T) from position 0 into the cache rows."""
        n, t = ids.shape
        pos = torch.arange(t, device=self.device).expand(n, t)
        x = self.model.embed(ids, roles, slots, items).to(self.dtype)
        mask = torch.ones(t, t, dtype=torch.bool, device=self.device).tril().expand(n, 1, t, t)
        self.model.transformer(x, pos, mask, cache=self.cache, write_positions=pos, rows=rows)
        for buf, val in (
            (self.tok_ids, ids),
            (self.tok_roles, roles),
            (self.tok_slots, slots),
            (self.tok_items, items),
        ):
            buf[rows, :t] = val
        self.cache.lengths[rows] = t

    def _refill(self, block: int) -> None:
        """Sliding window: rows without room for a step keep profile + last window_steps steps."""
        c = self.sim_config.context_length
        full = torch.nonzero(self.cache.lengths + block > c).flatten()
        if len(full) == 0:
            return
        p = self.prefix_length
        w = max(1, min(self.sim_config.window_steps, (c - p) // block - 1))
        keep = p + w * block
        starts = self.cache.lengths[full] - w * block  # (n,)
        tail = starts[:, None] + torch.arange(w * block, device=self.device)
        take = torch.cat([torch.arange(p, device=self.device).expand(len(full), p), tail], dim=1)
        bufs = [
            torch.gather(b[full], 1, take)
            for b in (self.tok_ids, self.tok_roles, self.tok_slots, self.tok_items)
        ]
        self._encode_rows(full, *bufs)
        assert int(self.cache.lengths[full].max()) == keep

    def _forward(
        self,
        cur: torch.Tensor,
        ids: torch.Tensor,
        roles: torch.Tensor,
        slots: torch.Tensor,
        items: torch.Tensor,
    ) -> torch.Tensor:
        """Append tokens (B, t) at each row's offset `cur`; return output logits at the last one."""
        _b, t = ids.shape
        pos = cur[:, None] + torch.arange(t, device=self.device)
        n = int(cur.max()) + t
        n = min(self.sim_config.context_length, 32 * math.ceil(n / 32))
        mask = torch.arange(n, device=self.device)[None, None, None, :] <= pos[:, None, :, None]
        x = self.model.embed(ids, roles, slots, items).to(self.dtype)
        h = self.model.transformer(x, pos, mask, cache=self.cache, write_positions=pos, kv_length=n)
        for buf, val in (
            (self.tok_ids, ids),
            (self.tok_roles, roles),
            (self.tok_slots, slots),
            (self.tok_items, items),
        ):
            buf.scatter_(1, pos, val)
        return self.model.output_logits(h[:, -1]).float()

    @torch.inference_mode()
    def step(
        self,
        rows: np.ndarray,
        slates: np.ndarray,
        uniforms: np.ndarray | None = None,
        forced_responses: np.ndarray | None = None,
        forced_leave: np.ndarray | None = None,
        peek: bool = False,
    ) -> StepOutcome:
        """Answer slates (len(rows), k) of item indices; see BatchedUserSimulator.

        With `peek=True` nothing advances: the probabilities of a hypothetical slate are
        computed at the current state (what a model-based agent asks), and the next real step
        overwrites the scratch positions.

        Every cache row runs the forward (rows not in `rows` get padding that is overwritten
        later and do not advance), which keeps the hot path free of gathers.
        """
        rows_np = np.asarray(rows, dtype=np.int64)
        slates_np = np.asarray(slates, dtype=np.int64)
        nb, k = slates_np.shape
        dev, cap = self.device, self.capacity
        block = step_block_length(k)
        if block + self.prefix_length > self.sim_config.context_length:
            raise ValueError(
                f"a slate of {k} items needs {block} tokens: more than the context "
                f"({self.sim_config.context_length}) minus the profile allows"
            )
        self._refill(block)
        all_rows = nb == cap and np.array_equal(rows_np, np.arange(cap))
        rows_t = torch.as_tensor(rows_np, device=dev)
        active = torch.zeros(cap, dtype=torch.bool, device=dev)
        active[rows_t] = True
        slate_full = torch.zeros(cap, k, dtype=torch.long, device=dev)
        slate_full[rows_t] = torch.as_tensor(slates_np, device=dev)
        u = torch.zeros(cap, k + 1, dtype=torch.float32, device=dev)
        if uniforms is not None:
            u[rows_t] = torch.as_tensor(np.asarray(uniforms, dtype=np.float32), device=dev)
        forced = None
        if forced_responses is not None:
            forced = torch.zeros(cap, k, dtype=torch.long, device=dev)
            forced[rows_t] = torch.as_tensor(
                np.asarray(forced_responses, dtype=np.int64), device=dev
            )
        item_tok = self._item_tokens(slate_full)  # (B, k)
        slot_ids = torch.arange(1, k + 1, device=dev).expand(cap, k)
        cur = self.cache.lengths.clone()
        x_tok = torch.where(self.steps_done == 0, START, CONT)[:, None]
        zeros1 = torch.zeros(cap, 1, dtype=torch.long, device=dev)
        ids = torch.cat([x_tok, item_tok, item_tok[:, :1]], dim=1)
        roles = torch.cat(
            [
                zeros1 + ROLE_CONTROL,
                torch.full((cap, k), ROLE_SLATE, device=dev),
                zeros1 + ROLE_RESTATED,
            ],
            dim=1,
        )
        slots = torch.cat([zeros1, slot_ids, zeros1 + 1], dim=1)
        items = torch.cat([zeros1 - 1, slate_full, slate_full[:, :1]], dim=1)
        probs = torch.zeros(cap, k, NUM_RESPONSES, device=dev)
        responses = torch.zeros(cap, k, dtype=torch.long, device=dev)
        for j in range(k + 1):
            logits = self._forward(cur, ids, roles, slots, items)
            cur = cur + ids.shape[1]
            if j == k:
                break
            pj = torch.softmax(logits[:, :3], dim=-1)
            probs[:, j] = pj
            if forced is not None:
                rj = forced[:, j]
            else:
                rj = (u[:, j : j + 1] >= torch.cumsum(pj, dim=-1)[:, :-1]).sum(-1)
            responses[:, j] = rj
            r_tok = self._resp_tokens[rj][:, None]
            if j + 1 < k:
                nxt = j + 1
                ids = torch.cat([r_tok, item_tok[:, nxt : nxt + 1]], dim=1)
                roles = torch.tensor([ROLE_RESPONSE, ROLE_RESTATED], device=dev).expand(cap, 2)
                slots = torch.tensor([j + 1, j + 2], device=dev).expand(cap, 2)
                items = torch.cat([zeros1 - 1, slate_full[:, nxt : nxt + 1]], dim=1)
            else:
                ids, roles = r_tok, zeros1 + ROLE_RESPONSE
                slots, items = zeros1 + k, zeros1 - 1
        leave_prob = torch.softmax(logits[:, 3:5], dim=-1)[:, 1]
        if not peek:
            self.cache.lengths = torch.where(active, cur, self.cache.lengths)
            self.steps_done = self.steps_done + active.long()
        sel = slice(None) if all_rows else rows_t
        responses_np = responses[sel].cpu().numpy()
        probs_np = probs[sel].double().cpu().numpy()
        leave_prob_np = leave_prob[sel].double().cpu().numpy()
        if forced_leave is not None:
            leave = np.asarray(forced_leave, dtype=bool)
        elif uniforms is not None:
            leave = np.asarray(uniforms)[:, k] < leave_prob_np
        else:
            leave = np.zeros(nb, dtype=bool)
        return StepOutcome(responses_np, probs_np, leave, leave_prob_np)

    # --------------------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, model.safetensors, population.safetensors, vocab.json and
        simulator_config.json (each atomically; no pickle)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach()
            .to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
            .contiguous()
            for k, v in self.model.state_dict().items()
        }
        atomic_write(
            out / "model.safetensors", lambda p: save_file(state, p, metadata={"format": "pt"})
        )
        atomic_write(
            out / "population.safetensors",
            lambda p: save_file({"population": torch.from_numpy(self.population.astype(np.int16))}, p),
        )
        atomic_write_text(out / "config.json", self.model.config.to_json_string())
        atomic_write_text(out / "vocab.json", json.dumps(self.tokenizer.to_dict()) + "\n")
        meta = {
            "simulator": self.sim_config.to_dict(),
            "profile_encoder": self.profile_encoder.to_dict(),
            "items": {
                c: self.items[c].tolist()
                for c in ("item_id", "title", "category", "price")
                if c in self.items
            },
            "extra": self.extra,
        }
        atomic_write_text(out / "simulator_config.json", json.dumps(meta, indent=1) + "\n")
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str = "cpu", dtype: str = "float32", capacity: int = 1
    ) -> GPT2UserSimulator:
        """Load a checkpoint written by save_pretrained (safetensors and JSON only)."""
        d = Path(directory)
        if not d.is_dir():
            raise CheckpointError(f"{d}: simulator checkpoint directory does not exist")
        for name in CHECKPOINT_FILES:
            if not (d / name).is_file():
                raise CheckpointError(f"{d / name}: file is missing from the simulator checkpoint")
        meta = _read_json(d / "simulator_config.json")
        vocab = _read_json(d / "vocab.json")
        try:
            gpt2_config = GPT2Config.from_dict(_read_json(d / "config.json"))
            sim_config = SimulatorConfig(**meta["simulator"])
            tokenizer = SimTokenizer.from_dict(vocab)
            encoder = ProfileEncoder.from_dict(meta["profile_encoder"])
            items = pd.DataFrame(meta["items"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{d}: inconsistent simulator config or vocabulary ({exc})"
            ) from None
        if gpt2_config.vocab_size != tokenizer.vocab_size:
            raise CheckpointError(
                f"{d / 'config.json'}: vocab_size {gpt2_config.vocab_size} does not match "
                f"vocab.json ({tokenizer.vocab_size} tokens)"
            )
        if len(items) != tokenizer.num_items:
            raise CheckpointError(
                f"{d / 'simulator_config.json'}: {len(items)} items but vocab.json has {tokenizer.num_items}"
            )
        state = _load_safetensors(d / "model.safetensors")
        population = _load_safetensors(d / "population.safetensors").get("population")
        if population is None:
            raise CheckpointError(f"{d / 'population.safetensors'}: no 'population' tensor")
        try:
            model = UserLM(
                GPT2LMHeadModel(gpt2_config),
                sim_config,
                state["item_features"],
                state["item_text"],
                state["item_known"],
            )
            model.load_state_dict(state, strict=True)
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(
                f"{d / 'model.safetensors'}: weights do not match config.json ({str(exc).splitlines()[0]})"
            ) from None
        return cls(
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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None


def load_batched_simulator(
    simulator: Any = None, device: str = "cpu", dtype: str = "float32", capacity: int = 1
) -> GPT2UserSimulator:
    """The embedded default (None), a checkpoint directory, or an existing simulator."""
    if isinstance(simulator, GPT2UserSimulator):
        simulator.ensure_capacity(capacity)
        return simulator
    if simulator is None or simulator == "default":
        simulator = DEFAULT_SIMULATOR_DIR
    if not isinstance(simulator, (str, Path)):
        raise ValueError(
            f"simulator must be None, a checkpoint directory or a GPT2UserSimulator, got {type(simulator)}"
        )
    return GPT2UserSimulator.from_pretrained(
        simulator, device=device, dtype=dtype, capacity=capacity
    )
