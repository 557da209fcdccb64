"""MEND's editor network g (docs/algorithms.md §10): (u, delta) -> (u~, delta~), and the update it makes.

Per edited layer l, the token factors are normalised per dimension by that layer's running statistics (updated
while training, frozen afterwards), concatenated, passed through one residual block shared by the layers,
x <- x + W2 relu(W1 (s_l * x + b_l)) with a layer-specific scale s_l and shift b_l (the paper's layer embedding)
and W2 = 0 at the start (g starts as the identity), and split back. The update is
Delta W_l = -alpha_l sum_t delta~_t u~_t^T with a learned step alpha_l per layer.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from editdecay.editing.mend.gradients import Factors


class RunningNorm(nn.Module):
    """Per-dimension standardisation with running mean and variance (Chan et al.'s parallel update)."""

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(size, dtype=torch.float64))

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        n = x.shape[0]
        if n == 0:
            return
        mean, m2 = x.mean(0), ((x - x.mean(0)) ** 2).sum(0)
        total = self.count + n
        shift = mean - self.mean
        self.m2 += m2 + shift**2 * self.count * n / total
        self.mean += shift * n / total
        self.count.fill_(float(total))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.count < 2:
            return x
        std = (self.m2 / (self.count - 1)).sqrt().clamp_min(1e-12)
        return ((x.double() - self.mean) / std).to(x.dtype)


class MendNetwork(nn.Module):
    """g for `n_layers` edited layers of one shape: inputs of width m, outputs of width d."""

    def __init__(self, m: int, d: int, n_layers: int, hidden: int, edit_lr: float) -> None:
        super().__init__()
        self.m, self.d = m, d
        self.input_norms = nn.ModuleList(RunningNorm(m) for _ in range(n_layers))
        self.grad_norms = nn.ModuleList(RunningNorm(d) for _ in range(n_layers))
        self.scale = nn.Parameter(torch.ones(n_layers, m + d))
        self.shift = nn.Parameter(torch.zeros(n_layers, m + d))
        self.up = nn.Linear(m + d, hidden)
        self.down = nn.Linear(hidden, m + d)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.alpha = nn.Parameter(torch.full((n_layers,), float(edit_lr)))

    def norms(self, index: int) -> tuple[RunningNorm, RunningNorm]:
        return cast(RunningNorm, self.input_norms[index]), cast(RunningNorm, self.grad_norms[index])

    def observe(self, index: int, factors: Factors) -> None:
        """Fold a batch of edited layer `index`'s factors into its normalisation statistics (training only)."""
        inputs, grads = self.norms(index)
        inputs.update(factors.inputs)
        grads.update(factors.grads)

    def update(self, index: int, factors: Factors) -> torch.Tensor:
        """Delta W (d, m) of edited layer `index` from its factors (differentiable in the network's parameters)."""
        inputs_norm, grads_norm = self.norms(index)
        x = torch.cat([inputs_norm(factors.inputs), grads_norm(factors.grads)], dim=1)
        x = x + self.down(torch.relu(self.up(self.scale[index] * x + self.shift[index])))
        inputs, grads = x[:, : self.m], x[:, self.m :]
        return -self.alpha[index] * (grads.T @ inputs)

    def network_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "alpha"]
