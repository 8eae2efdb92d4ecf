"""Titles and profile text read with a pretrained base's own tokenizer and token embeddings.

`--base-model` keeps the pretrained blocks but gives the network the simulator's closed
vocabulary (one token per item, per profile `field=value`, per response), so the base's
knowledge of words never reaches an item's title or a profile through those tokens. This
channel brings it back: every title and every profile token's text (`age_band=25-34` is read as
"age band 25-34") is tokenized with the base's tokenizer, its pretrained input token embeddings
(GPT-2's `wte`) are mean-pooled, and a learned projection adds the vector to the item
side-information channel (every item token, known or not) and to the profile token, beside the
closed vocabulary.

Design:

- The pooled vectors are a **frozen buffer**, computed once per item and per profile token when
  the network is built (the base's 50,257 x 768 embedding table is not kept: 154 MB, against
  3 KB per item). Frozen so that an item added later (`GPT2UserSimulator.add_items`) is pooled
  from the same pretrained table into the same space as the training catalog; a trained copy
  would drift away from what a new title can be given.
- The projection is learned and starts as the identity (the base's width is the network's):
  at the start the blocks read a title as the mean of its pretrained token embeddings, the
  input they were trained on; training then adapts it.
- At inference the projected vectors are cached per weight version (items inside
  `UserLM.item_side`, profile tokens in `token_table`), so a step costs one more gather.
- The checkpoint stores the vectors (`pretrained_text.item_emb`, `pretrained_text.token_emb`):
  loading needs neither the tokenizer nor the base. Only `add_items` with new titles reads the
  base again (`SimulatorConfig.pretrained_text` records where it came from); where it cannot
  (the base is gone, or is not the one trained with) new items get a zero vector and a warning
  says why.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simulators.tokenization import SimTokenizer

log = logging.getLogger(__name__)

MAX_TEXT_TOKENS = 32
"""Base tokens pooled per text (titles are rarely longer; the rest is cut)."""
_CHECK_ITEMS = 8
"""Catalog titles re-pooled to check a base read for `add_items` is the one trained with."""


@dataclass(frozen=True)
class BaseText:
    """A pretrained base's tokenizer and input token embeddings.

    Attributes:
        name: the base as given (hub name or directory).
        tokenizer: its `transformers` tokenizer.
        embeddings: (base vocabulary, E) float32 input token embeddings on the CPU.
    """

    name: str
    tokenizer: Any
    embeddings: torch.Tensor


def base_source(name: str) -> str:
    """Where a base is found again later: a local directory's absolute path, else the hub name."""
    local = Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else name


def _load(loader: Any, name: str) -> Any:
    """`loader.from_pretrained(name)`: the local files first, the hub only for a hub name."""
    try:
        return loader.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        if Path(name).expanduser().exists():
            raise
        return loader.from_pretrained(name)  # a hub name not cached (check_base_model ran)


def load_base_tokenizer(name: str) -> Any:
    """The tokenizer saved with a base model, checked to be one (cheap: no weights).

    transformers builds an *empty* GPT-2 tokenizer from a model directory that holds no
    tokenizer files, without a word; that is refused here.

    Raises:
        ValueError: no usable tokenizer beside the model.
    """
    from transformers import AutoTokenizer

    hint = (
        "titles and profiles are read with the base's own tokenizer: save it beside the model "
        "(tokenizer.save_pretrained(DIR)), or pass --no-pretrained-text"
    )
    try:
        tok = _load(AutoTokenizer, name)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"--base-model {name}: no tokenizer could be loaded ({first}); {hint}"
        ) from None
    if len(tok) < 2 or not tok(" a", add_special_tokens=False)["input_ids"]:
        raise ValueError(f"--base-model {name}: holds no tokenizer files; {hint}")
    return tok


def load_base_text(name: str) -> BaseText:
    """The tokenizer and pretrained input token embeddings of a base model.

    Raises:
        ValueError: no usable tokenizer, or one with ids beyond the model's embeddings.
    """
    from transformers import AutoModelForCausalLM

    tok = load_base_tokenizer(name)
    lm = _load(AutoModelForCausalLM, name)
    emb = lm.get_input_embeddings().weight.detach().float().cpu().clone()
    del lm
    if len(tok) > len(emb):
        raise ValueError(
            f"--base-model {name}: its tokenizer has {len(tok)} tokens but the model embeds "
            f"{len(emb)}: the tokenizer is not the model's"
        )
    return BaseText(name, tok, emb)


@functools.lru_cache(maxsize=1)
def _cached_base_text(name: str) -> BaseText:
    """`load_base_text`, kept for repeated `add_items` calls (one base at a time)."""
    return load_base_text(name)


def pool_texts(base: BaseText, texts: list[str]) -> torch.Tensor:
    """(len(texts), E) mean of each text's pretrained token embeddings (empty text: zeros).

    A space is put before every text, so its first word is tokenized as it is mid-sentence
    (byte-level BPE gives "red" and " red" different tokens; GPT-2 mostly saw the latter).
    """
    out = torch.zeros(len(texts), base.embeddings.shape[1])
    keep = [i for i, t in enumerate(texts) if t and t.strip()]
    if not keep:
        return out
    enc = base.tokenizer(
        [" " + texts[i].strip() for i in keep],
        add_special_tokens=False,
        truncation=True,
        max_length=MAX_TEXT_TOKENS,
    )["input_ids"]
    for i, ids in zip(keep, enc):
        if ids:
            out[i] = base.embeddings[torch.as_tensor(ids, dtype=torch.long)].mean(0)
    return out


def profile_texts(tokenizer: SimTokenizer) -> list[str]:
    """The text of every closed-vocabulary id below the item tokens ('' for specials).

    A profile token `age_band=25-34` reads "age band 25-34": the field's words and the value.
    """
    out = [""] * tokenizer.item_base
    for i, tok in enumerate(tokenizer.profile_vocab):
        field, _, value = tok.partition("=")
        out[tokenizer.profile_base + i] = f"{field.replace('_', ' ')} {value}".strip()
    return out


def pretrained_text_vectors(
    name: str, titles: list[str], tokenizer: SimTokenizer
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled base-token embeddings of item titles (N, E) and of profile tokens (item_base, E)."""
    base = load_base_text(name)
    return pool_texts(base, titles), pool_texts(base, profile_texts(tokenizer))


def new_item_vectors(
    channel: PretrainedTextChannel,
    source: str,
    reference_titles: list[str],
    titles: list[str],
) -> torch.Tensor:
    """Pooled vectors (n, E) of titles added after training, or zeros with a warning saying why.

    The base is read again from `source`; a few catalog titles are re-pooled first, and a base
    that does not reproduce their stored vectors (another model saved at that path) is not
    used.
    """
    zeros = torch.zeros(len(titles), channel.item_emb.shape[1])
    if not any(t and t.strip() for t in titles):
        return zeros
    why = "no new item gets a pretrained-text vector (they keep hashed title words)"
    try:
        base = _cached_base_text(source)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("pretrained text: the base %s cannot be read (%s); %s", source, first, why)
        return zeros
    check = [i for i, t in enumerate(reference_titles) if t and t.strip()][:_CHECK_ITEMS]
    stored = channel.item_emb[check].detach().float().cpu()
    if check and (
        base.embeddings.shape[1] != stored.shape[1]
        or not torch.allclose(pool_texts(base, [reference_titles[i] for i in check]), stored)
    ):
        log.warning(
            "pretrained text: the base at %s is not the one this simulator was trained with "
            "(its embeddings of the catalog's titles differ); %s",
            source,
            why,
        )
        return zeros
    return pool_texts(base, titles)


class PretrainedTextChannel(nn.Module):
    """Frozen pooled base-token vectors of items and profile tokens, and their projection.

    Args:
        item_emb: (N, E) pooled title embeddings (zero rows: no title).
        token_emb: (V0, E) pooled embeddings of the closed-vocabulary ids below the item
            tokens (profile tokens; zero rows for specials).
        width: the network's hidden size.
    """

    item_emb: torch.Tensor
    token_emb: torch.Tensor

    def __init__(self, item_emb: torch.Tensor, token_emb: torch.Tensor, width: int) -> None:
        """Register the vectors as buffers and the projection (identity when widths match)."""
        super().__init__()
        e = item_emb.shape[1]
        if token_emb.ndim != 2 or token_emb.shape[1] != e:
            raise ValueError(f"token_emb must be (V0, {e}), got {tuple(token_emb.shape)}")
        self.register_buffer("item_emb", item_emb.float())
        self.register_buffer("token_emb", token_emb.float())
        self.proj = nn.Linear(e, width, bias=False)
        with torch.no_grad():
            if e == width:
                self.proj.weight.copy_(torch.eye(width))
            else:
                nn.init.normal_(self.proj.weight, std=0.02)
        self._table: torch.Tensor | None = None
        self._table_key: tuple | None = None

    def items(self, idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Projected vectors (..., d) of item indices (...) (with autograd)."""
        return self.proj(self.item_emb[idx].to(dtype))

    def tokens(self, input_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Projected vectors (..., d) of token ids (...); 0 for item tokens (with autograd).

        The few closed-vocabulary rows are projected, then gathered (row V0 is the zero row
        every id from the item tokens on maps to).
        """
        table = F.pad(self.proj(self.token_emb.to(dtype)), (0, 0, 0, 1))  # (V0 + 1, d)
        return table[input_ids.clamp(max=len(self.token_emb))]

    def all_items(self) -> torch.Tensor:
        """Projected vectors (N, d) float32 of every item (inference)."""
        return self.proj(self.item_emb.float())

    def token_table(self) -> torch.Tensor:
        """(V0 + 1, d) float32 projected token vectors, last row 0 (inference; cached)."""
        key = tuple((p.data_ptr(), p._version) for p in (self.proj.weight, self.token_emb))
        if self._table_key != key or self._table is None:
            with torch.inference_mode():
                self._table = F.pad(self.proj(self.token_emb.float()), (0, 0, 0, 1))
            self._table_key = key
        return self._table

    def token_vectors_inference(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`tokens` without autograd: one gather from the cached table (item tokens: 0)."""
        v0 = len(self.token_emb)
        return self.token_table()[input_ids.clamp(max=v0)]
