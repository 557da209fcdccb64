"""MLP outputs that pass through a norm before joining the residual stream (Gemma 2 / Gemma 3).

MEMIT assumes W's output adds to the residual stream directly (docs/algorithms.md §0). When the block applies
an RMS norm N(x) = g * x / rms(x) to the MLP output first, a wanted residual change r at the subject
token is turned into a wanted change of the output projection's output by linearising N at the current
output x:  dx = rms(x) * (I - x x^T / |x|^2) (r / g)  (N is blind to changes along x; 1/g is damped where
a gain is ~0, as Gemma 3 has gains of exactly 0). The layer-by-layer recomputation of the residual absorbs
what the linearisation misses.
"""

from __future__ import annotations

import torch
from torch import nn

from editdecay.models import arch_for, block


def post_mlp_norm(model: nn.Module, layer: int) -> nn.Module | None:
    """The norm between block `layer`'s MLP output and the residual add, where the family has one (ArchSpec)."""
    path = arch_for(model).post_mlp_norm
    return None if path is None else block(model, layer).get_submodule(path)


def preimage_change(norm: nn.Module, outputs: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Change of the MLP outputs (d, n) that moves norm(outputs) by `residual` (d, n), to first order.

    `outputs` (n, d) are the current MLP outputs at the subject tokens.
    """
    x = outputs.double()
    param = next(norm.parameters())
    with torch.no_grad():
        ones = torch.ones(1, x.shape[1], dtype=param.dtype, device=param.device)
        gain = norm(ones)[0].double().cpu()  # g: rms(ones) = 1
        rms = norm_rms(norm, x)
    if not torch.isfinite(gain).all():
        raise ValueError("The post-MLP norm has non-finite gains; check the model's weights.")
    # Damped 1/g: output dimensions the norm (nearly) switches off cannot be reached through this layer,
    # so they get no change instead of an enormous one.
    damping = 1e-2 * float(gain.abs().median())
    u = residual.double().T * gain / (gain**2 + damping**2)  # (n, d)
    unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    u = u - (u * unit).sum(dim=1, keepdim=True) * unit
    return (rms[:, None] * u).T


def norm_rms(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """rms(x) per row as the norm computes it (with its epsilon)."""
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    return torch.sqrt(x.pow(2).mean(dim=1) + eps)
