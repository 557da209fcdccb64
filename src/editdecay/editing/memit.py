"""MEMIT (Meng et al., ICLR 2023): Delta_l = R K^T (lambda C_l + K K^T)^-1 (docs/algorithms.md §1)."""

from __future__ import annotations

import torch

from editdecay.editing.editor import EditRun, LocateEditor, layer_moments, moment_or_identity
from editdecay.editing.hparams import MemitHyperParams
from editdecay.editing.solve import memit_delta


class MemitEditor(LocateEditor[MemitHyperParams]):
    """Batch MEMIT; with `batch_size` set, sequential batches on the progressively edited model."""

    name = "memit"
    hparams_class = MemitHyperParams

    def _prepare(self, hp: MemitHyperParams, run: EditRun) -> dict[int, torch.Tensor | None]:
        return layer_moments(hp, run)

    def _layer_delta(
        self,
        layer: int,
        residual: torch.Tensor,
        keys: torch.Tensor,
        hp: MemitHyperParams,
        prepared: dict[int, torch.Tensor | None],
        state: None,
    ) -> torch.Tensor:
        moment = moment_or_identity(prepared[layer], keys)
        return memit_delta(residual, keys, moment, hp.mom2_update_weight, layer=layer)
