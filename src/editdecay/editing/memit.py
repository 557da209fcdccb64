"""MEMIT (Meng et al., ICLR 2023): Delta_l = R K^T (lambda C_l + K K^T)^-1 (docs/algorithms.md §1)."""

from __future__ import annotations

import torch

from editdecay.editing.editor import EditRun, LocateEditor
from editdecay.editing.hparams import MemitHyperParams
from editdecay.editing.solve import memit_delta


class MemitEditor(LocateEditor[MemitHyperParams]):
    """Batch MEMIT; with `batch_size` set, sequential batches on the progressively edited model."""

    name = "memit"
    hparams_class = MemitHyperParams

    def _prepare(self, hp: MemitHyperParams, run: EditRun) -> dict[int, torch.Tensor | None]:
        # mom2_adjustment = False: C = I (no statistic), as in the reference.
        return {layer: run.stats[layer].moment if layer in run.stats else None for layer in hp.layers}

    def _layer_delta(
        self,
        layer: int,
        residual: torch.Tensor,
        keys: torch.Tensor,
        hp: MemitHyperParams,
        prepared: dict[int, torch.Tensor | None],
        state: None,
    ) -> torch.Tensor:
        moment = prepared[layer]
        if moment is None:
            moment = torch.eye(keys.shape[0], dtype=torch.float64)
        return memit_delta(residual, keys, moment.to(keys.device), hp.mom2_update_weight, layer=layer)
