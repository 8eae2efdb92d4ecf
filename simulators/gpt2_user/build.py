"""build_user_lm: a fresh (or pretrained) UserLM for a catalog; the side information of items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from simulators.catalog import item_category_index, item_feature_matrix, item_features_like
from simulators.lm.backbone import backbone_from_pretrained
from simulators.lm.gpt2 import GPT2Backbone
from simulators.lm.model import SimulatorConfig, UserLM
from simulators.lm.pretrained_text import new_item_vectors, pretrained_text_vectors
from simulators.text_encoder import embed_minilm
from simulators.tokenization import SimTokenizer, text_buckets


def item_text_matrix(titles: list[str], cfg: SimulatorConfig) -> torch.Tensor:
    """(N, text_max_words) hashed word buckets of item titles (0 pads)."""
    out = torch.zeros(len(titles), cfg.text_max_words, dtype=torch.long)
    for i, title in enumerate(titles):
        b = text_buckets(title or "", cfg.text_buckets, cfg.text_max_words)
        out[i, : len(b)] = torch.tensor(b, dtype=torch.long)
    return out


def _titles(items: pd.DataFrame) -> list[str]:
    return items.get("title", pd.Series([""] * len(items))).fillna("").astype(str).tolist()


def title_embeddings(items: pd.DataFrame, cfg: SimulatorConfig) -> torch.Tensor | None:
    """(N, E) sentence embeddings of the titles for `cfg.text_encoder` (None: hashed only)."""
    if cfg.text_encoder == "hashed":
        return None
    return torch.from_numpy(embed_minilm(_titles(items)))


def item_side_information(
    model: UserLM, reference: pd.DataFrame, items: pd.DataFrame
) -> dict[str, torch.Tensor]:
    """What a network reads of new items, in the feature space of its catalog `reference`.

    Returns:
        `features` (n, F) float32 (`simulators.catalog.item_features_like`), `text` (n, W)
        hashed title words, with a text encoder `text_emb` (n, E), and with the
        pretrained-text channel `base_text` (n, E) (`simulators.lm.pretrained_text`).
    """
    cfg = model.sim_config
    out = {
        "features": torch.from_numpy(item_features_like(reference, items)),
        "text": item_text_matrix(_titles(items), cfg),
    }
    emb = title_embeddings(items, cfg)
    if emb is not None:
        out["text_emb"] = emb
    if model.pretrained_text is not None:
        out["base_text"] = new_item_vectors(
            model.pretrained_text, cfg.pretrained_text, _titles(reference), _titles(items)
        )
    return out


def build_user_lm(
    tokenizer: SimTokenizer,
    items: pd.DataFrame,
    sim_config: SimulatorConfig,
    size: str = "small",
    base_model: str | None = None,
    item_known: np.ndarray | None = None,
) -> UserLM:
    """A fresh UserLM for a catalog: from a named size, or from a pretrained causal LM.

    `base_model` ('gpt2', a hub name, or a local directory) loads the pretrained network through
    its backbone adapter and resizes its embeddings to our vocabulary; the network keeps its
    pretrained blocks. With `sim_config.pretrained_text` (a base's name) titles and profile
    tokens are also read with that base's tokenizer and pretrained token embeddings.

    Raises:
        ValueError: unknown size, unsupported or unreadable base model, or a base model whose
            positions do not cover the context.
    """
    if base_model:
        backbone = backbone_from_pretrained(base_model, tokenizer.vocab_size)
        if backbone.max_positions < sim_config.context_length:
            raise ValueError(
                f"base model has {backbone.max_positions} positions < context_length "
                f"{sim_config.context_length}"
            )
    else:
        backbone = GPT2Backbone.fresh(size, tokenizer.vocab_size, sim_config.context_length)
    feats = torch.from_numpy(item_feature_matrix(items))
    text = item_text_matrix(_titles(items), sim_config)
    known = (
        torch.ones(len(items), dtype=torch.bool)
        if item_known is None
        else torch.from_numpy(item_known)
    )
    category = torch.from_numpy(item_category_index(items))
    base_text: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
    if sim_config.pretrained_text:
        base_text = pretrained_text_vectors(sim_config.pretrained_text, _titles(items), tokenizer)
    return UserLM(
        backbone,
        sim_config,
        feats,
        text,
        known,
        tokenizer.output_tokens,
        category,
        title_embeddings(items, sim_config),
        *base_text,
    )
