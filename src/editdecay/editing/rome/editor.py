"""ROME: Delta = (v* - W k*) u^T / (u^T k*) with C u = k* (docs/algorithms.md §9).

The shared locate-then-edit driver supplies every piece but the update: the key k* (the down projection's input at
the subject's last token, averaged over the bare prompt and the sampled prefixes, §1.4), the value change
v* - W k* (the target value of §1.3 at the edit layer's output, mapped through a post-MLP norm where the model has
one, §1.5) and C (the layer's second moment, §1.6). With one layer, adding the value change at the block output is
adding it at the MLP output, which is ROME's formulation; the one difference from the published code is the norm
clamp, which is relative to the block output here (MEMIT's convention) rather than to the MLP output.

With batch_size 1 (the only setting) each request is solved on the model the previous updates edited: sequential
ROME. Earlier edits stay mapped as long as the new key is C^-1-orthogonal to theirs (u^T k_old ~ 0).
"""

from __future__ import annotations

from typing import Any

import torch

from editdecay.editing.editor import EditRun, LocateEditor, layer_moments, moment_or_identity
from editdecay.editing.hparams import fallback_hparams
from editdecay.editing.rome.hparams import RomeHyperParams, rome_preset, rome_preset_for
from editdecay.editing.solve import SolveError, check_finite
from editdecay.models import ModelShape, default_edit_layers


def rome_delta(residual: torch.Tensor, key: torch.Tensor, C: torch.Tensor, *, layer: int | None = None) -> torch.Tensor:
    """The rank-one update (d, m) from the value change r = v* - W k* (d, 1), the key k* (m, 1) and C (m, m):
    Delta = r u^T / (u^T k*) with u solving C u = k* (Cholesky, float64), so that Delta k* = r exactly."""
    where = f"layer {layer}" if layer is not None else "the solve"
    if residual.shape[1] != 1 or key.shape[1] != 1:
        raise ValueError(f"ROME solves one request at a time, got {key.shape[1]} keys at {where}.")
    r, k, C64 = residual.double(), key.double(), C.double()
    check_finite(where, R=r, K=k, C=C64)
    factor, info = torch.linalg.cholesky_ex(C64)
    if int(info) != 0:
        raise SolveError(
            f"ROME at {where}: the second moment C is not positive definite. Collect the statistic on more tokens "
            "(mom2_n_tokens)."
        )
    u = torch.cholesky_solve(k, factor)
    scale = float(u.T @ k)
    if not scale > 0:
        raise SolveError(f"ROME at {where}: u^T k* = {scale:.3g} is not positive (a zero key?).")
    return r @ u.T / scale


class RomeEditor(LocateEditor[RomeHyperParams]):
    name = "rome"
    hparams_class = RomeHyperParams

    @classmethod
    def preset_settings(cls, name: str) -> dict[str, Any]:
        return rome_preset(name)

    @classmethod
    def preset_name_for(cls, shape: ModelShape) -> str | None:
        return rome_preset_for(shape)

    @classmethod
    def fallback_settings(cls, shape: ModelShape) -> dict[str, Any]:
        window = default_edit_layers(shape)
        return {**fallback_hparams(shape), "layers": [window[len(window) // 2]]}

    def _prepare(self, hp: RomeHyperParams, run: EditRun) -> dict[int, torch.Tensor | None]:
        return layer_moments(hp, run)

    def _layer_delta(
        self,
        layer: int,
        residual: torch.Tensor,
        keys: torch.Tensor,
        hp: RomeHyperParams,
        prepared: dict[int, torch.Tensor | None],
        state: None,
    ) -> torch.Tensor:
        return rome_delta(residual, keys, moment_or_identity(prepared[layer], keys), layer=layer)
