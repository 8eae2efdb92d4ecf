"""LoRA fine-tuning of a pretrained base (`train-sim --base-model PATH --lora-rank R`), with PEFT.

What trains:

- **Adapters** (PEFT `LoraConfig`, rank R, alpha 2R unless given, no dropout: the project's
  configs use none) on every linear layer of every block (`Backbone.lora_targets`: GPT-2's
  c_attn, c_proj and c_fc). Adapting all of them rather than attention only is what QLoRA
  found to match full fine-tuning; they are a few percent of the block weights at R = 8.
- **The simulator's own parts**, fully: the closed vocabulary's token embeddings and head rows
  (`Backbone.vocabulary_parameters`: a pretrained base's rows for those ids are other words, so
  item identity and the responses could not be learned frozen), and role, slot, item
  side-information, session-summary and pretrained-text projections (new, randomly or
  identity initialised).
- **Frozen**: the base's block weights, layer norms and positions (its knowledge).

The backbone's forward calls its linear modules (`simulators.lm.gpt2`), so the adapters count
in training and validation alike (the oneDNN inference path is skipped while adapters are in).
A simulator checkpoint is written from a merged copy (`merged`: W + scale * B A in every
adapted layer): a plain checkpoint that loads without peft and steps exactly as fast as a fully
fine-tuned one. The training state (`--resume`) holds the unmerged adapters.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from simulators.lm.model import UserLM

LORA_INSTALL = "pip install 'llm-usersim[lora]' (the peft package)"
"""How to get LoRA."""


class LoraMissing(ImportError, ValueError):
    """LoRA was asked for but peft is not installed (a ValueError: the CLI prints one line)."""


def lora_available() -> bool:
    """True when peft is importable."""
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def require_peft() -> None:
    """Raise `LoraMissing` (saying what to install) when peft is not importable."""
    if not lora_available():
        raise LoraMissing(f"--lora-rank needs the optional lora extra: {LORA_INSTALL}")


def add_lora(model: UserLM, rank: int, alpha: int | None = None) -> None:
    """Put LoRA adapters into the model's backbone, in place, and freeze the base's weights.

    Args:
        model: the network, its backbone freshly loaded from a pretrained base.
        rank: adapter rank (>= 1).
        alpha: LoRA alpha (the update is scaled by alpha / rank); None: 2 * rank.

    Raises:
        LoraMissing: peft is not installed.
        ValueError: a rank below 1, or a backbone without LoRA targets.
    """
    if rank < 1:
        raise ValueError(f"lora rank must be >= 1, got {rank}")
    require_peft()
    from peft import LoraConfig, inject_adapter_in_model

    backbone = model.backbone
    if not backbone.lora_targets:
        raise ValueError(f"the {backbone.model_type!r} backbone names no layers for LoRA")
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank if alpha is None else alpha,
        lora_dropout=0.0,
        target_modules=list(backbone.lora_targets),
        fan_in_fan_out=backbone.lora_fan_in_fan_out,
        bias="none",
    )
    inject_adapter_in_model(config, backbone)  # freezes the backbone except the adapters
    for p in backbone.vocabulary_parameters():
        p.requires_grad_(True)


def _lora_layers(module: nn.Module) -> list[tuple[str, Any]]:
    """(name, layer) of every LoRA-wrapped layer (none without peft or adapters)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(n, m) for n, m in module.named_modules() if isinstance(m, LoraLayer)]


def has_lora(model: nn.Module) -> bool:
    """Whether the model holds LoRA adapters."""
    return bool(_lora_layers(model))


def merge_lora(model: UserLM) -> UserLM:
    """Merge every adapter into its base layer and put the plain layer back, in place.

    The result has the architecture of a fully fine-tuned network (its state dict has the
    same keys), with every parameter trainable again.
    """
    for name, layer in _lora_layers(model):
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def merged(model: UserLM) -> UserLM:
    """A merged copy of a model with adapters (the model itself when it has none)."""
    return merge_lora(copy.deepcopy(model)) if has_lora(model) else model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimiser updates (all of them without LoRA)."""
    return [p for p in model.parameters() if p.requires_grad]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """`parameters` (of the network as saved: adapters merged), `trainable`, `adapters`."""
    adapters = sum(
        p.numel()
        for _, layer in _lora_layers(model)
        for n, p in layer.named_parameters()
        if n.startswith(("lora_A.", "lora_B."))
    )
    total = sum(p.numel() for p in model.parameters())
    return {
        "parameters": total - adapters,
        "trainable": sum(p.numel() for p in trainable_parameters(model)),
        "adapters": adapters,
    }
