"""The rank-one factors of a linear layer's weight gradient (docs/algorithms.md §10).

For y_t = W u_t at every token t, dL/dW = sum_t delta_t u_t^T with delta_t = dL/dy_t: the gradient is known from
the layer's inputs u_t and output gradients delta_t alone. `gradient_factors` reads both for several layers in one
forward/backward pass, without parameter gradients of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Factors:
    """One layer's factors over the real (unpadded) tokens of a batch: inputs u (N, m), output gradients (N, d)."""

    inputs: torch.Tensor
    grads: torch.Tensor

    def weight_gradient(self) -> torch.Tensor:
        """sum_t delta_t u_t^T, (d, m): the gradient of W in math orientation (y = W u)."""
        return self.grads.T @ self.inputs


def gradient_factors(
    model: nn.Module,
    modules: dict[str, nn.Module],
    weights: Sequence[nn.Parameter],
    loss_of: Callable[[], torch.Tensor],
    mask: torch.Tensor,
) -> dict[str, Factors]:
    """Run `loss_of()` (a forward of `model` returning a scalar) with the named `modules` recorded; return their
    factors at the positions where `mask` (batch, T) is 1. `weights` (those modules' weights) get requires_grad for
    the pass only, so that the outputs are part of the graph; no parameter gradient is stored."""
    outputs: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs[name] = args[0].detach()
            outputs[name] = output

        return hook

    flags = [w.requires_grad for w in weights]
    handles = [module.register_forward_hook(recorder(name)) for name, module in modules.items()]
    try:
        for w in weights:
            w.requires_grad_(True)
        loss = loss_of()
        names = list(modules)
        grads = torch.autograd.grad(loss, [outputs[n] for n in names])
    finally:
        for handle in handles:
            handle.remove()
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)
    keep = mask.bool()
    return {
        name: Factors(inputs[name][keep].float(), grad[keep].float()) for name, grad in zip(names, grads, strict=True)
    }
