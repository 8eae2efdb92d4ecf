"""UserLM: a transformers GPT-2 plus the input channels of SimTokenizer, and its fast forward.

The network *is* a `GPT2LMHeadModel` (so `--base-model gpt2` loads real pretrained weights and
`GPT2Config` holds the hyperparameters); around it sit role, slot and item side-information
embeddings that are added to the token embeddings. The output head is GPT-2's own, untied
`lm_head`, read only at the five tokens a user can write (skip, click, buy, cont, leave).

`UserLM.transformer` runs GPT-2's blocks functionally over the module's own weights. One code path
serves packed training (block-diagonal causal mask, positions restarting per session) and batched
inference with a preallocated KV cache written at per-row offsets; a test pins it to the HF
forward. Dropout is not applied (the default configs set it to 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from simulators.tokenization import BOS, LEAVE, NUM_ROLES, OUTPUT_TOKENS, PAD

MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 32},
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 128},
    "medium": {"n_layer": 6, "n_head": 8, "n_embd": 256},
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},
}


@dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    """Settings of the simulator around the network (saved as simulator_config.json)."""

    context_length: int = 512
    """Tokens of context per user (GPT-2 n_positions)."""
    window_steps: int = 12
    """Steps kept when a full context is refilled (sliding window by re-encoding)."""
    max_slots: int = 32
    """Slots with their own slot embedding; later slots share the last one."""
    text_buckets: int = 4096
    """Hash buckets of title words and word pairs (learned text embeddings)."""
    text_max_words: int = 16
    """Title words (and pairs) kept per item."""
    item_dropout: float = 0.1
    """Training only: chance an item token is replaced by <unk_item> (teaches cold start)."""
    format_version: int = 1
    """Checkpoint format version."""

    def __post_init__(self) -> None:
        """Validate ranges."""
        if self.context_length < 32:
            raise ValueError(f"context_length must be >= 32, got {self.context_length}")
        if self.window_steps < 1:
            raise ValueError(f"window_steps must be >= 1, got {self.window_steps}")
        if not 0.0 <= self.item_dropout < 1.0:
            raise ValueError(f"item_dropout must be in [0, 1), got {self.item_dropout}")

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


def make_gpt2_config(size: str, vocab_size: int, context_length: int) -> GPT2Config:
    """A GPT2Config of a named size for our vocabulary, untied head, no dropout."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown --size {size!r}; allowed: {sorted(MODEL_SIZES)}")
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=context_length,
        tie_word_embeddings=False,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=BOS,
        eos_token_id=LEAVE,
        pad_token_id=PAD,
        **MODEL_SIZES[size],
    )


class UserLM(nn.Module):
    """GPT-2 with role/slot/item channels and a five-way user output."""

    def __init__(
        self,
        gpt2: GPT2LMHeadModel,
        sim_config: SimulatorConfig,
        item_features: torch.Tensor,
        item_text: torch.Tensor,
        item_known: torch.Tensor,
    ) -> None:
        """Wrap a GPT2LMHeadModel and register the catalog side information as buffers."""
        super().__init__()
        self.gpt2 = gpt2
        self.sim_config = sim_config
        d = gpt2.config.n_embd
        self.role_emb = nn.Embedding(NUM_ROLES, d)
        self.slot_emb = nn.Embedding(sim_config.max_slots + 1, d)
        self.feat_proj = nn.Linear(item_features.shape[1], d, bias=False)
        self.word_emb = nn.Embedding(sim_config.text_buckets, d, padding_idx=0)
        for emb in (self.role_emb, self.slot_emb, self.word_emb):
            nn.init.normal_(emb.weight, std=0.02)
        nn.init.normal_(self.feat_proj.weight, std=0.02)
        with torch.no_grad():
            self.word_emb.weight[0].zero_()
        self.register_buffer("item_features", item_features.float())
        self.register_buffer("item_text", item_text.long())
        self.register_buffer("item_known", item_known.bool())
        self.register_buffer(
            "output_ids", torch.tensor(OUTPUT_TOKENS, dtype=torch.long), persistent=False
        )

    @property
    def config(self) -> GPT2Config:
        """The GPT2Config."""
        return self.gpt2.config

    def embed(
        self, input_ids: torch.Tensor, roles: torch.Tensor, slots: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """Input embeddings (B, T, d) from the four channels (each (B, T) int64)."""
        x = self.gpt2.transformer.wte(input_ids)
        x = x + self.role_emb(roles) + self.slot_emb(slots.clamp(max=self.sim_config.max_slots))
        is_item = items >= 0
        if bool(is_item.any()):
            idx = items.clamp(min=0)
            words = self.item_text[idx]  # (B, T, W)
            count = (words > 0).sum(-1, keepdim=True).clamp(min=1).to(x.dtype)
            side = (
                self.feat_proj(self.item_features[idx].to(x.dtype))
                + self.word_emb(words).sum(-2) / count
            )
            x = x + side * is_item.unsqueeze(-1).to(x.dtype)
        return x

    def transformer(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor,
        cache: StaticKVCache | None = None,
        write_positions: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        kv_length: int | None = None,
    ) -> torch.Tensor:
        """GPT-2 blocks over input embeddings x (B, T, d); returns final hidden states (B, T, d).

        Args:
            position_ids: (B, T) absolute positions.
            attn_mask: bool (B, 1, T, S), True where a query may attend; S = T without a cache,
                else the attended cache length.
            cache: when given, this call's keys/values are written into it at write_positions
                (B, T) (rows `rows` of the cache, all rows if None) and attention runs over the
                first kv_length cached positions.
        """
        tr = self.gpt2.transformer
        cfg = self.gpt2.config
        b, t, d = x.shape
        nh = cfg.n_head
        hd = d // nh
        h = x + tr.wpe(position_ids)
        for layer, block in enumerate(tr.h):
            a = block.ln_1(h)
            qkv = torch.addmm(block.attn.c_attn.bias, a.reshape(b * t, d), block.attn.c_attn.weight)
            q, k, v = qkv.view(b, t, 3, nh, hd).permute(2, 0, 3, 1, 4)  # each (B, H, T, hd)
            if cache is not None:
                k, v = cache.write(layer, k, v, write_positions, rows, kv_length)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            o = o.transpose(1, 2).reshape(b * t, d)
            h = h + torch.addmm(block.attn.c_proj.bias, o, block.attn.c_proj.weight).view(b, t, d)
            m = block.ln_2(h).reshape(b * t, d)
            m = F.gelu(
                torch.addmm(block.mlp.c_fc.bias, m, block.mlp.c_fc.weight), approximate="tanh"
            )
            h = h + torch.addmm(block.mlp.c_proj.bias, m, block.mlp.c_proj.weight).view(b, t, d)
        return tr.ln_f(h)

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., 5) over (skip, click, buy, cont, leave) from hidden states (..., d)."""
        w = self.gpt2.lm_head.weight[self.output_ids]  # (5, d)
        return hidden @ w.t().to(hidden.dtype)


class StaticKVCache:
    """Preallocated keys/values (layer, B, H, C, hd) and per-row lengths.

    Preallocation keeps memory flat over an episode (a growing cache re-allocates every step);
    attention reads only the first `kv_length` positions, the longest live row rounded up.
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_head: int,
        context: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        """Allocate zeros."""
        shape = (n_layer, batch, n_head, context, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.context = context

    def write(
        self,
        layer: int,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        rows: torch.Tensor | None,
        kv_length: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, hd) at positions (B, T); return the cache slice to attend over."""
        kc, vc = self.k[layer], self.v[layer]
        if rows is None:
            idx = positions[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            kc.scatter_(2, idx, k.to(kc.dtype))
            vc.scatter_(2, idx, v.to(vc.dtype))
            n = kv_length or self.context
            return kc[:, :, :n], vc[:, :, :n]
        # a subset of rows starting from empty: write their positions, attend over the new tokens
        kc[rows[:, None], :, positions] = k.transpose(1, 2).to(kc.dtype)
        vc[rows[:, None], :, positions] = v.transpose(1, 2).to(vc.dtype)
        return k, v


def packed_loss(
    model: UserLM, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced loss on packed rows: only the user's tokens (responses, cont/leave) count.

    Args:
        batch: (B, T) tensors input_ids, roles, slots, items, position_ids, segment_ids,
            target_kind, target (see simulators.tokenization).

    Returns:
        (mean loss over targets, summed response NLL, summed leave NLL, number of targets).
    """
    seg = batch["segment_ids"]
    t = seg.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seg.device).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal  # (B, T, T)
    x = model.embed(batch["input_ids"], batch["roles"], batch["slots"], batch["items"])
    h = model.transformer(x, batch["position_ids"], mask[:, None])
    kind = batch["target_kind"]
    sel = kind > 0
    logits = model.output_logits(h[sel]).float()  # (N, 5)
    k = kind[sel]
    tgt = batch["target"][sel]
    resp = k == 1
    resp_nll = F.cross_entropy(logits[resp, :3], tgt[resp], reduction="sum")
    leave_nll = F.cross_entropy(logits[~resp, 3:5], tgt[~resp], reduction="sum")
    n = sel.sum()
    return (resp_nll + leave_nll) / n.clamp(min=1), resp_nll, leave_nll, n


def packed_probs(
    model: UserLM, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted distributions at every target of packed rows.

    Returns:
        (probs (N, 5) with the 3 response or 2 leave classes filled and the rest 0,
        target_kind (N,)), in row-major position order.
    """
    seg = batch["segment_ids"]
    t = seg.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seg.device).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal
    x = model.embed(batch["input_ids"], batch["roles"], batch["slots"], batch["items"])
    h = model.transformer(x, batch["position_ids"], mask[:, None])
    kind = batch["target_kind"]
    sel = kind > 0
    logits = model.output_logits(h[sel]).float()
    k = kind[sel]
    probs = torch.zeros_like(logits)
    resp = k == 1
    probs[resp, :3] = torch.softmax(logits[resp, :3], -1)
    probs[~resp, 3:5] = torch.softmax(logits[~resp, 3:5], -1)
    return probs, k
