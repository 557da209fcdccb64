"""Closed-form updates of MEMIT (docs/algorithms.md §1.5) and AlphaEdit (§2), as pure functions.

Shapes: R (d, n) residuals, K (m, n) keys, C (m, m) second moment; the update Delta is (d, m) and acts
as W <- W + Delta on W (d_out x d_in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class SolveError(ValueError):
    """A solve is ill-posed (singular or non-finite system); the message names the layer and the fix."""


def memit_delta(
    R: torch.Tensor, K: torch.Tensor, C: torch.Tensor, lam: float, *, layer: int | None = None
) -> torch.Tensor:
    """Delta = R K^T (lam C + K K^T)^-1, in float64 via a Cholesky solve (no explicit inverse)."""
    where = f"layer {layer}" if layer is not None else "the solve"
    R64, K64, C64 = R.double(), K.double(), C.double()
    check_finite(where, R=R64, K=K64, C=C64)
    A = lam * C64 + K64 @ K64.T
    factor, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise SolveError(
            f"MEMIT at {where}: lambda*C + K K^T is not positive definite (the statistic is singular or "
            "nearly so). Collect the statistic on more tokens (mom2_n_tokens) or raise mom2_update_weight."
        )
    # (lam C + K K^T) X = K  =>  Delta = R X^T (A is symmetric).
    X = torch.cholesky_solve(K64, factor)
    return R64 @ X.T


@dataclass(frozen=True)
class Projector:
    """P = U0 U0^T onto the eigen-directions of C kept as its (approximate) null space."""

    P: torch.Tensor  # (m, m) float64
    kept: int
    total: int
    rule: str

    def summary(self) -> dict[str, object]:
        return {"kept": self.kept, "total": self.total, "rule": self.rule}


def nullspace_projector(
    C: torch.Tensor, *, threshold: float = 2e-2, energy: float | None = None, layer: int | None = None
) -> Projector:
    """Projector onto the directions C barely uses (docs/algorithms.md §2).

    Absolute rule (published): keep eigenvectors whose eigenvalue < `threshold`. Relative rule (when
    `energy` is given): keep the smallest-eigenvalue directions that together hold at most `energy` of
    trace(C), which does not depend on the layer's scale.
    """
    where = f"layer {layer}" if layer is not None else "the statistic"
    C64 = C.double()
    check_finite(where, C=C64)
    values, vectors = torch.linalg.eigh((C64 + C64.T) / 2)  # ascending eigenvalues
    if energy is None:
        keep = values < threshold
        rule = f"eigenvalue < {threshold:g}"
    else:
        share = torch.cumsum(values.clamp_min(0), 0) / values.clamp_min(0).sum()
        keep = share <= energy
        rule = f"smallest directions holding <= {energy:g} of trace(C)"
    U0 = vectors[:, keep]
    return Projector(U0 @ U0.T, int(keep.sum()), values.numel(), rule)


def alphaedit_delta(
    R: torch.Tensor, K: torch.Tensor, P: torch.Tensor, C_prev: torch.Tensor, alpha: float, *, layer: int | None = None
) -> torch.Tensor:
    """Delta^T = (P (K K^T + C_p) + alpha I)^-1 P K R^T, solved in float64 (LU; the system is not symmetric)."""
    where = f"layer {layer}" if layer is not None else "the solve"
    R64, K64, P64, Cp64 = R.double(), K.double(), P.double(), C_prev.double()
    check_finite(where, R=R64, K=K64, C_p=Cp64)
    m = K64.shape[0]
    A = P64 @ (K64 @ K64.T + Cp64) + alpha * torch.eye(m, dtype=torch.float64, device=K64.device)
    B = P64 @ K64 @ R64.T
    solution, info = torch.linalg.solve_ex(A, B)
    if int(info) != 0 or not torch.isfinite(solution).all():
        raise SolveError(f"AlphaEdit at {where}: the system is singular; use a larger L2 (ridge alpha).")
    return solution.T


def check_finite(where: str, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            hint = (
                "collect it again (check the model's dtype; use float32)"
                if name == "C"
                else "check the model and the target optimisation"
            )
            raise SolveError(f"{where}: {name} has non-finite entries; {hint}.")
