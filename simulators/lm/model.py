"""UserLM: a causal LM backbone plus the input channels of SimTokenizer, and its one forward.

Around the backbone (`simulators.lm.backbone`; GPT-2 by default) sit role, slot and item
side-information embeddings that are added to the token embeddings, and an optional
session-summary embedding. The output head is the backbone's own, untied, read only at the
tokens a user can write: one per behaviour (skip, click, buy by default), then continue and
leave.

`UserLM.forward(tokens, position_ids, attend)` is the one forward: packed training, cached
stepping, refills and candidate scoring all call it, and differ only in the `Attention` object
(`simulators.lm.attention`) that says which keys each query sees and where new keys go.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from simulators.lm.attention import FullAttention, recency_slopes, window_bias
from simulators.lm.backbone import Backbone
from simulators.lm.pretrained_text import PretrainedTextChannel
from simulators.text_encoder import TEXT_ENCODERS
from simulators.tokenization import NUM_ROLES, NUM_SUMMARY_CODES


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
    attention_window_steps: int = 0
    """0: GPT-2's absolute positions and full causal attention; a full context is refilled by
    re-encoding the profile and the last `window_steps` steps. N > 0: recency attention (ALiBi
    over steps): no absolute positions, every token attends to the profile, its own step and
    the N steps before it, with a per-head penalty linear in the step distance. Inference then
    keeps a ring of N + 1 step blocks in the KV cache: a step costs the same at any history
    length and nothing is ever re-encoded (earlier steps still reach a token through the
    layers, up to n_layer * N steps back)."""
    text_encoder: str = "hashed"
    """How item titles enter: `hashed` (hashed words, learned embeddings) or `minilm` (also
    each title's all-MiniLM-L6-v2 sentence embedding, projected; `simulators.text_encoder`)."""
    pretrained_text: str = ""
    """The pretrained base (local directory or hub name) whose tokenizer and input token
    embeddings read item titles and profile tokens (`simulators.lm.pretrained_text`); '': the
    channel is off. train-sim sets it with `--base-model` (unless `--no-pretrained-text`)."""
    session_summary: bool = False
    """Add a learned embedding of the session-summary channel (what the user has clicked and
    bought of an item's category earlier in the session, see `simulators.tokenization`) to
    every item token: with recency attention, consumption older than the window still
    reaches the prediction."""
    response_calibration: tuple[float, float] | None = None
    """(slope, intercept) of a Platt scaling of the engagement log-odds, log p(engage) -
    log p(skip), that train-sim fits on calibration users it does not train on
    (`TrainConfig.calibration_fraction`); every prediction (sampling, scoring, validate) reads
    the calibrated distribution: p(skip) becomes sigmoid(-(slope * z + intercept)) and the
    engagements keep their shares of the rest. None: the network's own distribution."""
    format_version: int = 2
    """Checkpoint format version (2: weights under `backbone.`, behaviours in vocab.json and a
    content hash; version-1 checkpoints load unchanged)."""

    def __post_init__(self) -> None:
        """Validate ranges."""
        if self.context_length < 32:
            raise ValueError(f"context_length must be >= 32, got {self.context_length}")
        if self.window_steps < 1:
            raise ValueError(f"window_steps must be >= 1, got {self.window_steps}")
        if self.attention_window_steps < 0:
            raise ValueError(
                f"attention_window_steps must be >= 0 (0: full attention), got {self.attention_window_steps}"
            )
        if self.max_slots < 1 or self.text_buckets < 2 or self.text_max_words < 1:
            raise ValueError(
                "max_slots and text_max_words must be >= 1 and text_buckets >= 2, got "
                f"{self.max_slots}, {self.text_max_words}, {self.text_buckets}"
            )
        if not 0.0 <= self.item_dropout < 1.0:
            raise ValueError(f"item_dropout must be in [0, 1), got {self.item_dropout}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(
                f"text_encoder must be one of {list(TEXT_ENCODERS)}, got {self.text_encoder!r}"
            )
        if self.response_calibration is not None:
            bad = ValueError(
                "response_calibration must be (slope > 0, intercept), finite, got "
                f"{self.response_calibration!r}"
            )
            try:  # JSON gives a list
                cal = tuple(float(v) for v in self.response_calibration)
            except (TypeError, ValueError):
                raise bad from None
            if len(cal) != 2 or not all(math.isfinite(v) for v in cal) or cal[0] <= 0:
                raise bad
            object.__setattr__(self, "response_calibration", cal)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


@dataclass
class TokenBlock:
    """The five token channels of a batch of token sequences, each (B, T) int64.

    Attributes:
        input_ids: token ids.
        roles: role of every token (profile, slate item, re-stated item, response, control).
        slots: 1-based slot of the item a token belongs to (0 otherwise).
        items: item index of item tokens (-1 otherwise).
        summary: session-summary code of item tokens (0 otherwise).
    """

    input_ids: torch.Tensor
    roles: torch.Tensor
    slots: torch.Tensor
    items: torch.Tensor
    summary: torch.Tensor

    def __getitem__(self, index: object) -> TokenBlock:
        """The same index applied to every channel (rows, columns or both)."""
        return TokenBlock(
            self.input_ids[index],  # type: ignore[index]
            self.roles[index],  # type: ignore[index]
            self.slots[index],  # type: ignore[index]
            self.items[index],  # type: ignore[index]
            self.summary[index],  # type: ignore[index]
        )

    def channels(self) -> tuple[torch.Tensor, ...]:
        """(input_ids, roles, slots, items, summary)."""
        return self.input_ids, self.roles, self.slots, self.items, self.summary


class UserLM(nn.Module):
    """A backbone with role/slot/item channels and a per-behaviour user output.

    Args:
        backbone: the causal LM (`simulators.lm.backbone.Backbone`).
        sim_config: settings around the network.
        item_features: (N, F) float item features (category one-hot, log price).
        item_text: (N, W) int64 hashed title words (0 pads).
        item_known: (N,) bool items that had a token in training.
        output_tokens: token ids the head reads: one per behaviour, then continue, leave.
        item_category: (N,) category index of every item (needed with `session_summary`).
        item_text_emb: (N, E) float sentence embeddings of the titles (needed with
            `text_encoder="minilm"`; zero rows for items without a title).
        item_base_text: (N, E) pooled pretrained token embeddings of the titles, and
        token_base_text: (V0, E) of the closed-vocabulary ids below the item tokens (both
            needed with `pretrained_text`; `simulators.lm.pretrained_text`).
    """

    # Buffers (registered in __init__ / add_session_summary).
    item_features: torch.Tensor
    item_text: torch.Tensor
    item_known: torch.Tensor
    output_ids: torch.Tensor
    item_category: torch.Tensor
    item_text_emb: torch.Tensor | None

    def __init__(
        self,
        backbone: Backbone,
        sim_config: SimulatorConfig,
        item_features: torch.Tensor,
        item_text: torch.Tensor,
        item_known: torch.Tensor,
        output_tokens: tuple[int, ...],
        item_category: torch.Tensor | None = None,
        item_text_emb: torch.Tensor | None = None,
        item_base_text: torch.Tensor | None = None,
        token_base_text: torch.Tensor | None = None,
    ) -> None:
        """Register the embeddings and the catalog side information (as buffers)."""
        super().__init__()
        self.backbone = backbone
        self.sim_config = sim_config
        d = backbone.hidden_size
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
            "output_ids", torch.tensor(output_tokens, dtype=torch.long), persistent=False
        )
        self.summary_emb: nn.Embedding | None = None
        self.text_proj: nn.Linear | None = None
        if sim_config.text_encoder == "hashed":
            self.register_buffer("item_text_emb", None)
        else:
            if item_text_emb is None or len(item_text_emb) != len(item_features):
                raise ValueError(
                    f"a {sim_config.text_encoder!r} text encoder needs a title embedding per item"
                )
            self.text_proj = nn.Linear(item_text_emb.shape[1], d, bias=False)
            nn.init.normal_(self.text_proj.weight, std=0.02)
            self.register_buffer("item_text_emb", item_text_emb.float())
        self.pretrained_text: PretrainedTextChannel | None = None
        if sim_config.pretrained_text:
            if item_base_text is None or token_base_text is None:
                raise ValueError("a pretrained_text simulator needs pooled vectors of its text")
            if len(item_base_text) != len(item_features):
                raise ValueError(
                    f"item_base_text has {len(item_base_text)} rows for {len(item_features)} items"
                )
            self.pretrained_text = PretrainedTextChannel(item_base_text, token_base_text, d)
        self._side: torch.Tensor | None = None
        self._side_key: tuple | None = None
        self._out_w: torch.Tensor | None = None
        self._out_key: tuple | None = None
        if sim_config.session_summary:
            if item_category is None:
                raise ValueError("a session_summary simulator needs each item's category index")
            self.add_session_summary(item_category)

    @property
    def num_behaviours(self) -> int:
        """Behaviours the head answers with (outputs before continue/leave)."""
        return len(self.output_ids) - 2

    def add_session_summary(self, item_category: torch.Tensor) -> None:
        """Switch the session-summary channel on with a zero-initialised embedding.

        A trained network thus computes the same function until training teaches it to use the
        channel.
        """
        if len(item_category) != len(self.item_features):
            raise ValueError(
                f"item_category has {len(item_category)} entries for {len(self.item_features)} items"
            )
        dev = self.item_features.device
        self.summary_emb = nn.Embedding(
            NUM_SUMMARY_CODES, self.backbone.hidden_size, padding_idx=0, device=dev
        )
        nn.init.zeros_(self.summary_emb.weight)
        self.register_buffer("item_category", item_category.long().to(dev))

    def embed(self, tokens: TokenBlock) -> torch.Tensor:
        """Input embeddings (B, T, d) of the token channels.

        With autograd every item token's side information is computed from its features and
        title words; at inference the per-item sums are computed once per weight version
        (`item_side`) and gathered, and the result is cast to the backbone's dtype.
        """
        if not torch.is_grad_enabled():
            return self._embed_inference(tokens)
        x = self.backbone.embed_tokens(tokens.input_ids)
        slots = tokens.slots.clamp(max=self.sim_config.max_slots)
        x = x + self.role_emb(tokens.roles) + self.slot_emb(slots)
        if self.summary_emb is not None:
            x = x + self.summary_emb(tokens.summary)
        if self.pretrained_text is not None:
            x = x + self.pretrained_text.tokens(tokens.input_ids, x.dtype)
        # computed at every token and masked, with no data-dependent branch: `torch.func.vmap`
        # (per-user gradients of DP training, `simulators.training.dp`) cannot batch one
        items = tokens.items
        is_item = items >= 0
        idx = items.clamp(min=0)
        words = self.item_text[idx]  # (B, T, W)
        count = (words > 0).sum(-1, keepdim=True).clamp(min=1).to(x.dtype)
        side = (
            self.feat_proj(self.item_features[idx].to(x.dtype))
            + self.word_emb(words).sum(-2) / count
        )
        if self.text_proj is not None and self.item_text_emb is not None:
            side = side + self.text_proj(self.item_text_emb[idx].to(x.dtype))
        if self.pretrained_text is not None:
            side = side + self.pretrained_text.items(idx, x.dtype)
        return x + side * is_item.unsqueeze(-1).to(x.dtype)

    def _embed_inference(self, tokens: TokenBlock) -> torch.Tensor:
        """`embed` without autograd, with the per-item side embeddings precomputed."""
        x = self.backbone.embed_tokens(tokens.input_ids).float()
        slots = tokens.slots.clamp(max=self.sim_config.max_slots)
        x = x + self.role_emb(tokens.roles) + self.slot_emb(slots)
        x = x + self.item_side()[tokens.items + 1]
        if self.summary_emb is not None:
            x = x + self.summary_emb(tokens.summary).float()
        if self.pretrained_text is not None:
            x = x + self.pretrained_text.token_vectors_inference(tokens.input_ids)
        return x.to(self.backbone_dtype)

    @property
    def backbone_dtype(self) -> torch.dtype:
        """The dtype of the backbone's weights (float32, or bfloat16/float16 for inference)."""
        return self.backbone.head_weight().dtype

    ITEM_SIDE_CHANNELS = ("attributes", "title")
    """The parts of an item's side information: its features (category, price) and its title
    (hashed words, plus sentence embeddings and the pretrained base's pooled title tokens when
    the network has those channels)."""

    def item_side_parts(self) -> dict[str, torch.Tensor]:
        """(num_items, d) float32 side embedding of every item, per `ITEM_SIDE_CHANNELS` part."""
        with torch.inference_mode():
            words = self.item_text  # (N, W)
            count = (words > 0).sum(-1, keepdim=True).clamp(min=1).float()
            title = self.word_emb(words).sum(-2) / count
            if self.text_proj is not None and self.item_text_emb is not None:
                title = title + self.text_proj(self.item_text_emb.float())
            if self.pretrained_text is not None:
                title = title + self.pretrained_text.all_items()
            return {"attributes": self.feat_proj(self.item_features.float()), "title": title}

    def item_side(self) -> torch.Tensor:
        """(num_items + 1, d) float32 side embeddings of every item (row 0: none).

        Recomputed whenever a weight they depend on changes.
        """
        params = [self.feat_proj.weight, self.word_emb.weight, self.item_features, self.item_text]
        if self.text_proj is not None and self.item_text_emb is not None:
            params += [self.text_proj.weight, self.item_text_emb]
        if self.pretrained_text is not None:
            params += [self.pretrained_text.proj.weight, self.pretrained_text.item_emb]
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._side_key != key or self._side is None:
            side = sum(self.item_side_parts().values())
            assert isinstance(side, torch.Tensor)
            self._side = torch.cat([side.new_zeros(1, side.shape[1]), side])
            self._side_key = key
        return self._side

    @contextlib.contextmanager
    def without_item_side(self, items: torch.Tensor, channel: str) -> Iterator[None]:
        """Inference inside the block sees `items` without that part of their side information.

        The counterfactual of `simulators.explanations`: the cached per-item sums are swapped
        for a copy with the part subtracted, so cached stepping and candidate scoring run
        unchanged; keys and values already in the cache (earlier steps) keep what they saw.
        """
        if channel not in self.ITEM_SIDE_CHANNELS:
            raise ValueError(
                f"unknown item side channel {channel!r}; allowed: {', '.join(self.ITEM_SIDE_CHANNELS)}"
            )
        side = self.item_side()
        items = torch.unique(items.to(side.device))
        masked = side.clone()
        masked[items + 1] -= self.item_side_parts()[channel][items]
        self._side = masked
        try:
            yield
        finally:
            self._side = side

    def forward(
        self, tokens: TokenBlock, position_ids: torch.Tensor, attend: object
    ) -> torch.Tensor:
        """The one forward: final hidden states (B, T, d) of the token channels.

        Args:
            tokens: (B, T) token channels.
            position_ids: (B, T) absolute positions (all 0 with recency attention).
            attend: the `simulators.lm.attention.Attention` of this call (packed sessions, the
                KV cache, the recency ring or scratch candidates).
        """
        return self.backbone(self.embed(tokens), position_ids, attend)

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., R + 2) over (behaviours..., continue, leave) from hidden states (..., d).

        With autograd the head is differentiable in the hidden states' dtype; at inference the
        rows are cached in float32 and the logits computed in float32 (a bfloat16 matmul would
        build a oneDNN kernel for every distinct row count).
        """
        head = self.backbone.head_weight()  # (vocab, d)
        if torch.is_grad_enabled():
            logits = hidden @ head[self.output_ids].t().to(hidden.dtype)  # (R + 2, d)
        else:
            key = (head.data_ptr(), head._version, head.dtype)
            if self._out_key != key or self._out_w is None:
                with torch.inference_mode():
                    self._out_w = head[self.output_ids].float()
                self._out_key = key
            logits = hidden.float() @ self._out_w.t()
        cal = self.sim_config.response_calibration
        if cal is None:
            return logits
        return calibrated_logits(logits, self.num_behaviours, *cal)


def engagement_log_odds(logits: torch.Tensor, num_behaviours: int) -> torch.Tensor:
    """Log p(any engagement) - log p(skip) of response logits (..., >= R).

    What calibration rescales (behaviour 0 is skip, `simulators.behaviours`).
    """
    return torch.logsumexp(logits[..., 1:num_behaviours], -1) - logits[..., 0]


def calibrated_logits(
    logits: torch.Tensor, num_behaviours: int, slope: float, intercept: float
) -> torch.Tensor:
    """Logits (..., R + 2) whose response softmax is Platt-scaled on the engagement log-odds.

    With z the engagement log-odds, the new p(skip) is sigmoid(-(slope * z + intercept)) and
    every engagement keeps its share of p(engage); continue/leave are untouched. Slope 1 and
    intercept 0 give the same distribution back.
    """
    r = num_behaviours
    if r < 2:
        return logits
    engaged = logits[..., 1:r]
    norm = torch.logsumexp(engaged, -1, keepdim=True)
    z = norm[..., 0] - logits[..., 0]
    # softmax over (-z', log p(b | engaged)...) = (1 - sigmoid(z'), sigmoid(z') p(b | engaged))
    skip = -(slope * z + intercept)
    return torch.cat([skip[..., None], engaged - norm, logits[..., r:]], -1)


def packed_inputs(
    model: UserLM, batch: dict[str, torch.Tensor]
) -> tuple[TokenBlock, torch.Tensor, FullAttention]:
    """Token channels, position ids and attention of packed rows.

    The mask is block-diagonal causal (a token sees its own session only): bool (B, 1, T, T),
    or with recency attention an additive (B, H, T, T) bias that also limits each token to the
    profile and the last `attention_window_steps` steps (position ids are then all 0).
    """
    seg = batch["segment_ids"]
    t = seg.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seg.device).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal  # (B, T, T)
    tokens = TokenBlock(
        batch["input_ids"],
        batch["roles"],
        batch["slots"],
        batch["items"],
        batch.get("summary", torch.zeros_like(batch["input_ids"])),
    )
    window = model.sim_config.attention_window_steps
    if not window:
        return tokens, batch["position_ids"], FullAttention(mask[:, None])
    steps = batch["step_ids"]
    bias = window_bias(steps, steps, mask, window, recency_slopes(model.backbone.n_head))
    return tokens, torch.zeros_like(batch["position_ids"]), FullAttention(bias)


def target_logits(
    model: UserLM, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, R + 2) at every target of packed rows (row-major) and their target kinds."""
    tokens, pos, attend = packed_inputs(model, batch)
    h = model(tokens, pos, attend)
    kind = batch["target_kind"]
    sel = kind > 0
    return model.output_logits(h[sel]).float(), kind[sel]


def packed_loss(
    model: UserLM, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced loss on packed rows: only the user's tokens (responses, cont/leave) count.

    Args:
        model: the network.
        batch: (B, T) tensors input_ids, roles, slots, items, summary, position_ids, step_ids,
            segment_ids, target_kind, target (see simulators.tokenization).

    Returns:
        (mean loss over targets, summed response NLL, summed leave NLL, number of targets).
    """
    logits, k = target_logits(model, batch)
    r = model.num_behaviours
    tgt = batch["target"][batch["target_kind"] > 0]
    resp = k == 1
    resp_nll = F.cross_entropy(logits[resp, :r], tgt[resp], reduction="sum")
    leave_nll = F.cross_entropy(logits[~resp, r : r + 2], tgt[~resp], reduction="sum")
    n = (k > 0).sum()
    return (resp_nll + leave_nll) / n.clamp(min=1), resp_nll, leave_nll, n


def packed_probs(
    model: UserLM, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted distributions at every target of packed rows.

    Returns:
        (probs (N, R + 2) with the R response or 2 leave classes filled and the rest 0,
        target_kind (N,)), in row-major position order.
    """
    logits, k = target_logits(model, batch)
    r = model.num_behaviours
    probs = torch.zeros_like(logits)
    resp = k == 1
    probs[resp, :r] = torch.softmax(logits[resp, :r], -1)
    probs[~resp, r : r + 2] = torch.softmax(logits[~resp, r : r + 2], -1)
    return probs, k
