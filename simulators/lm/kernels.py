"""CPU inference kernels: oneDNN's fused linear (+GELU) with bucketed shapes, and a fast GELU.

On AMD CPUs MKL's float32 GEMM runs about 2.5x below oneDNN's, and oneDNN fuses the GELU; it
builds (and keeps) a kernel per input shape, so row counts are padded to a few buckets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_ONEDNN_OK: dict[torch.dtype, bool] = {}


def onednn_linear_ok(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused linear (`torch.ops.mkldnn._linear_pointwise`) runs in dtype here."""
    if dtype not in _ONEDNN_OK:
        ok = False
        if torch.backends.mkldnn.is_available():
            try:
                x = torch.linspace(-2, 2, 8).view(2, 4).to(dtype)
                w = torch.ones(3, 4, dtype=dtype)
                b = torch.zeros(3, dtype=dtype)
                y = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "tanh")
                ref = F.gelu(x.float() @ w.float().t(), approximate="tanh")
                ok = y.shape == ref.shape and bool(torch.allclose(y.float(), ref, atol=0.05))
            except (RuntimeError, AttributeError, NotImplementedError):
                ok = False
        _ONEDNN_OK[dtype] = ok
    return _ONEDNN_OK[dtype]


def padded_rows(m: int) -> int:
    """Round m up to one of about 8 sizes per octave (at most 12.5% more; multiples of 8)."""
    if m <= 64:
        return -(-m // 8) * 8
    g = 1 << (m.bit_length() - 4)
    return -(-m // g) * g


def fused_linear(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, gelu: bool = False
) -> torch.Tensor:
    """One oneDNN call: x @ w.T + b (w is (out, in)), optionally followed by the tanh GELU.

    oneDNN builds (and caches, with its JIT code and reordered weights) one kernel per input
    shape; padding the rows to `padded_rows` keeps the number of shapes small, so memory stays
    flat however the batch varies (the unpadded call grows the process by ~0.5 MB per new row
    count) and kernels are rarely rebuilt.
    """
    m = x.shape[0]
    mp = padded_rows(m)
    if mp != m:
        x = F.pad(x, (0, 0, 0, mp - m))
    if gelu:
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "tanh")
    else:
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return y[:m] if mp != m else y


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh GELU.

    Without autograd in float32 it is computed as x * sigmoid(2z) in place (the same function,
    0.5 * (1 + tanh(z)) = sigmoid(2z), about twice as fast on CPU).
    """
    if torch.is_grad_enabled() or x.dtype != torch.float32:
        return F.gelu(x, approximate="tanh")
    c = 2.0 * math.sqrt(2.0 / math.pi)
    g = x * x
    return g.mul_(0.044715 * c).add_(c).mul_(x).sigmoid_().mul_(x)
