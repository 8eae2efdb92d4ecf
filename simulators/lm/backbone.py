"""The backbone adapter: what `UserLM` needs of a causal language model, and the registry.

Everything architecture-specific (how a block computes, where positions enter, the head, how a
pretrained checkpoint is loaded and resized to the simulator's vocabulary) sits in one subclass
of `Backbone` per architecture; `UserLM`, the KV cache, the attention objects, training and
stepping only use this interface. Adding another causal LM from `transformers` is a new module
beside `simulators/lm/gpt2.py` plus one entry in `BACKBONES` (see the README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig

from simulators.lm.attention import Attention

DROPOUT_KEY = "usersim_dropout"
"""Config key of the backbone's training dropout (`Backbone.dropout`)."""


class Backbone(nn.Module):
    """A causal LM run functionally over input embeddings, attention delegated per layer.

    Subclasses set `model_type` (the `transformers` config's) and implement the methods below.
    """

    model_type: ClassVar[str] = ""
    config: PretrainedConfig
    lora_targets: ClassVar[tuple[str, ...]] = ()
    """Names of the linear layers LoRA adapts (`simulators.training.lora`); empty: no LoRA."""
    lora_fan_in_fan_out: ClassVar[bool] = False
    """Whether those layers store their weight as (in, out) (GPT-2's Conv1D does)."""

    @property
    def n_layer(self) -> int:
        """Transformer layers."""
        raise NotImplementedError

    @property
    def n_head(self) -> int:
        """Attention heads (of keys and values too: the KV cache's head count)."""
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states and input embeddings."""
        raise NotImplementedError

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.n_head

    @property
    def max_positions(self) -> int:
        """Longest context the position embeddings cover."""
        raise NotImplementedError

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, d) of ids (B, T)."""
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, attend: Attention
    ) -> torch.Tensor:
        """Final hidden states (B, T, d) of input embeddings x (B, T, d) at position_ids (B, T).

        Every layer's attention is computed by `attend(layer, q, k, v)`.
        """
        raise NotImplementedError

    def head_weight(self) -> torch.Tensor:
        """The output head's weight (vocab, d) (untied; the user's outputs are rows of it)."""
        raise NotImplementedError

    def vocabulary_parameters(self) -> list[nn.Parameter]:
        """The closed vocabulary's token embeddings and the head.

        Their rows are the simulator's own tokens (a pretrained base's rows for those ids mean
        other words), so they are trained also when LoRA freezes the rest of the network.
        """
        raise NotImplementedError

    @property
    def dropout(self) -> float:
        """Training dropout on the block inputs and residual branches (0.0: none).

        Kept in the config under `DROPOUT_KEY` (saved with the checkpoint), not in the
        `transformers` pdrop fields: a pretrained base's own pdrop values never switch it on.
        """
        return float(getattr(self.config, DROPOUT_KEY, 0.0))

    def set_dropout(self, p: float) -> None:
        """Set the training dropout (see `dropout`); p in [0, 1)."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        setattr(self.config, DROPOUT_KEY, float(p))

    def cast_for_inference(self, dtype: torch.dtype) -> None:
        """Cast the network's weights for inference in dtype."""
        self.to(dtype)

    def parameter_count(self) -> int:
        """Parameters of the network."""
        return sum(p.numel() for p in self.parameters())

    def config_json(self) -> str:
        """The `transformers` config as JSON (config.json of a checkpoint)."""
        return self.config.to_json_string()

    @classmethod
    def fresh(cls, size: str, vocab_size: int, context_length: int) -> Backbone:
        """A randomly initialised network of a named size."""
        raise NotImplementedError

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> Backbone:
        """An empty network of a saved config (weights are loaded afterwards)."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path: str | Path, vocab_size: int) -> Backbone:
        """Pretrained weights with the token embeddings resized to `vocab_size`.

        The head is untied, so the user's outputs learn apart from the inputs.
        """
        raise NotImplementedError


def _registry() -> dict[str, type[Backbone]]:
    from simulators.lm.gpt2 import GPT2Backbone

    return {GPT2Backbone.model_type: GPT2Backbone}


def backbone_class(model_type: str) -> type[Backbone]:
    """The adapter for a `transformers` model_type.

    Raises:
        ValueError: the architecture has no adapter (naming the supported ones).
    """
    backbones = _registry()
    if model_type not in backbones:
        raise ValueError(
            f"unsupported base-model architecture {model_type!r}; supported: "
            f"{', '.join(sorted(backbones))}"
        )
    return backbones[model_type]


def check_base_model(path: str | Path) -> str:
    """The model_type of a pretrained causal LM, checked to have an adapter.

    Cheap (it reads the config only), so a bad `--base-model` fails before any work. A local
    directory is read as it is; a hub name is read from the local cache, and otherwise from the
    hub only when the hub answers within a few seconds (offline, the answer is one clear error
    rather than half a minute of retries).

    Raises:
        ValueError: the model cannot be found or read, or its architecture is unsupported.
    """
    from transformers import AutoConfig

    name = str(path)
    local = Path(name)
    looks_local = local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not local.is_dir():
        raise ValueError(f"--base-model {name}: no such model directory")
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        if looks_local:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"--base-model {name}: not a readable model directory ({first})"
            ) from None
        if not _hub_reachable():
            raise ValueError(
                f"--base-model {name}: not a local directory, not in the local cache, and the "
                "model hub cannot be reached from here; pass the directory of a saved model"
            ) from None
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as exc2:
            first = str(exc2).strip().splitlines()[0] if str(exc2).strip() else type(exc2).__name__
            raise ValueError(f"--base-model {name}: cannot load a model config ({first})") from None
    backbone_class(config.model_type)
    return str(config.model_type)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub accepts a TCP connection within `timeout` seconds."""
    import socket

    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def backbone_from_pretrained(path: str | Path, vocab_size: int) -> Backbone:
    """Load a pretrained causal LM (hub name or local directory) through its adapter.

    Raises:
        ValueError: the model cannot be found or read, or its architecture is unsupported.
    """
    return backbone_class(check_base_model(path)).from_pretrained(path, vocab_size)
