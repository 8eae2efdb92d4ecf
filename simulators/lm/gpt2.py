"""GPT2Backbone: the `transformers` GPT-2 behind the `Backbone` interface.

The network *is* a `GPT2LMHeadModel` (so `--base-model gpt2` loads real pretrained weights and a
`GPT2Config` holds the hyperparameters), run functionally over its own weights: one code path
serves packed training (block-diagonal causal mask, positions restarting per session) and
batched inference with a preallocated KV cache (a test pins it to the HF forward). Dropout is
not applied (the configs set it to 0).

Inference (no autograd) on CPU takes faster kernels for the same arithmetic: oneDNN's fused
linear (+GELU) instead of MKL's GEMM, with shapes bucketed (`simulators.lm.kernels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Block
from transformers.pytorch_utils import Conv1D

from simulators.lm.attention import Attention
from simulators.lm.backbone import Backbone
from simulators.lm.kernels import fused_linear, gelu_tanh, onednn_linear_ok
from simulators.tokenization import BOS, LEAVE, PAD

MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 32},
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 128},
    "medium": {"n_layer": 6, "n_head": 8, "n_embd": 256},
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},
}
"""Named network sizes of `train-sim --size` (gpt2: GPT-2 small's shape)."""


def make_gpt2_config(size: str, vocab_size: int, context_length: int) -> GPT2Config:
    """A GPT2Config of a named size for our vocabulary, untied head (dropout: `Backbone.dropout`)."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown --size {size!r}; allowed: {sorted(MODEL_SIZES)}")
    shape = MODEL_SIZES[size]
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
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        n_embd=shape["n_embd"],
    )


class GPT2Backbone(Backbone):
    """`GPT2LMHeadModel` as a backbone (see the module docstring).

    Args:
        lm: the network; its token embeddings must already match the simulator's vocabulary.
    """

    model_type: ClassVar[str] = "gpt2"
    lora_targets: ClassVar[tuple[str, ...]] = ("c_attn", "c_proj", "c_fc")
    lora_fan_in_fan_out: ClassVar[bool] = True

    def __init__(self, lm: GPT2LMHeadModel) -> None:
        """Wrap a GPT2LMHeadModel."""
        super().__init__()
        self.lm = lm
        self.config = lm.config
        self._fast_key: tuple | None = None
        self._fast_weights: list[tuple[torch.Tensor, ...]] = []

    @property
    def n_layer(self) -> int:
        """Transformer layers."""
        return int(self.config.n_layer)

    @property
    def n_head(self) -> int:
        """Attention heads."""
        return int(self.config.n_head)

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states."""
        return int(self.config.n_embd)

    @property
    def max_positions(self) -> int:
        """n_positions."""
        return int(self.config.n_positions)

    @property
    def _blocks(self) -> Sequence[GPT2Block]:
        """The transformer blocks (`transformer.h`, a ModuleList typed as holding Modules)."""
        return cast("Sequence[GPT2Block]", self.lm.transformer.h)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """wte(input_ids)."""
        return self.lm.transformer.wte(input_ids)

    def head_weight(self) -> torch.Tensor:
        """lm_head.weight (untied)."""
        return self.lm.lm_head.weight

    def vocabulary_parameters(self) -> list[torch.nn.Parameter]:
        """wte.weight and lm_head.weight."""
        return [self.lm.transformer.wte.weight, self.lm.lm_head.weight]

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, attend: Attention
    ) -> torch.Tensor:
        """GPT-2's blocks over x (B, T, d) + wpe(position_ids); attention by `attend`."""
        tr = self.lm.transformer
        b, t, d = x.shape
        nh = self.n_head
        h = (x + tr.wpe(position_ids)).reshape(b * t, d)
        p = self.dropout if self.training else 0.0
        if p > 0.0:  # training only (the fast path below never runs with autograd on)
            h = torch.nn.functional.dropout(h, p, training=True)
        fast = self._fast_linears(h)
        for layer, block in enumerate(self._blocks):
            a = block.ln_1(h)
            if fast is not None:
                w_qkv, b_qkv, w_o, b_o, w_fc, b_fc, w_out, b_out = fast[layer]
                q, k, v = fused_linear(a, w_qkv, b_qkv).view(b, t, 3, nh, -1).unbind(2)
                o = attend(layer, q, k, v)
                h = h.add_(fused_linear(o, w_o, b_o))
                m = fused_linear(block.ln_2(h), w_fc, b_fc, gelu=True)
                h = h.add_(fused_linear(m, w_out, b_out))
                continue
            # the modules are called (Conv1D: one addmm), so LoRA adapters wrapping them count
            q, k, v = block.attn.c_attn(a).view(b, t, 3, nh, -1).unbind(2)
            o = attend(layer, q, k, v)
            h = h + self._drop(block.attn.c_proj(o), p)
            m = gelu_tanh(block.mlp.c_fc(block.ln_2(h)))
            h = h + self._drop(block.mlp.c_proj(m), p)
        return tr.ln_f(h).view(b, t, d)

    @staticmethod
    def _drop(x: torch.Tensor, p: float) -> torch.Tensor:
        """Residual-branch dropout (identity at p 0)."""
        return torch.nn.functional.dropout(x, p, training=True) if p > 0.0 else x

    def _fast_linears(self, h: torch.Tensor) -> list[tuple[torch.Tensor, ...]] | None:
        """Per-layer (out, in) weights for oneDNN's fused linear, or None where it does not apply.

        Inference only (no autograd), on CPU, in a dtype the kernel takes. The transposed copies
        are rebuilt whenever a parameter changes (in-place updates bump its version).
        """
        if torch.is_grad_enabled() or h.device.type != "cpu" or not onednn_linear_ok(h.dtype):
            return None
        mods = [
            (blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj) for blk in self._blocks
        ]
        if any(type(mod) is not Conv1D for layer in mods for mod in layer):
            return None  # LoRA-wrapped layers (training): their `.weight` lacks the adapter
        params = [p for layer in mods for mod in layer for p in (mod.weight, mod.bias)]
        key = (h.dtype, *((id(p), p.data_ptr(), p._version) for p in params))
        if self._fast_key != key:
            with torch.inference_mode():
                self._fast_weights = [
                    tuple(
                        t
                        for mod in layer
                        for t in (
                            mod.weight.t().contiguous().to(h.dtype),
                            mod.bias.detach().clone().to(h.dtype),
                        )
                    )
                    for layer in mods
                ]
            self._fast_key = key
        return self._fast_weights

    @classmethod
    def fresh(cls, size: str, vocab_size: int, context_length: int) -> GPT2Backbone:
        """A randomly initialised GPT-2 of a named size (`MODEL_SIZES`)."""
        return cls(GPT2LMHeadModel(make_gpt2_config(size, vocab_size, context_length)))

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> GPT2Backbone:
        """An empty GPT-2 of a saved config.json."""
        return cls(GPT2LMHeadModel(GPT2Config.from_dict(config)))

    @classmethod
    def from_pretrained(cls, path: str | Path, vocab_size: int) -> GPT2Backbone:
        """Pretrained GPT-2 ('gpt2', a hub name, or a local directory) for the simulator.

        The embeddings are resized to the simulator's vocabulary and the head untied (a copy
        of the pretrained one).
        """
        lm = GPT2LMHeadModel.from_pretrained(str(path))
        lm.resize_token_embeddings(vocab_size)
        lm.config.tie_word_embeddings = False
        lm.lm_head.weight = torch.nn.Parameter(lm.lm_head.weight.detach().clone())
        return cls(lm)
