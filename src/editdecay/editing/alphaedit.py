"""AlphaEdit (Fang et al., ICLR 2025): null-space constrained updates, sequential batches (docs/algorithms.md §2).

Delta_l^T = (P_l (K K^T + C_p,l) + L2 I)^-1 P_l K R^T, with P_l the projector onto the eigen-directions
of C_l that hold (almost) no energy, and C_p,l the sum of K K^T over the keys of all earlier batches,
recomputed on the edited model after each batch. The model is not restored between batches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from editdecay.data import EditRequest
from editdecay.editing.editor import EditRun, LocateEditor
from editdecay.editing.hparams import AlphaEditHyperParams
from editdecay.editing.patch import WeightPatch
from editdecay.editing.protocol import EditContext
from editdecay.editing.solve import Projector, alphaedit_delta, nullspace_projector
from editdecay.storage import atomic_directory

log = logging.getLogger(__name__)


@dataclass
class AlphaEditState:
    """The sequential-edit memory: C_p per layer (sum of K K^T of every edited batch) and counts."""

    layers: list[int]
    cache: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (m, m) float64
    n_edits: int = 0
    n_batches: int = 0

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        with atomic_directory(directory) as staging:
            tensors = {str(layer): c.contiguous() for layer, c in self.cache.items()}
            save_file(tensors, str(staging / "cache.safetensors"))
            meta = {"layers": self.layers, "n_edits": self.n_edits, "n_batches": self.n_batches}
            (staging / "state.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> AlphaEditState:
        directory = Path(directory)
        if not (directory / "state.json").is_file():
            raise FileNotFoundError(f"{directory} is not a saved AlphaEditState (missing state.json).")
        meta = json.loads((directory / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(directory / "cache.safetensors"))
        return cls(
            list(meta["layers"]), {int(k): v for k, v in tensors.items()}, int(meta["n_edits"]), int(meta["n_batches"])
        )


class AlphaEditEditor(LocateEditor[AlphaEditHyperParams]):
    """AlphaEdit; `edit_sequential` also takes and returns the C_p state to continue a sequence."""

    name = "alphaedit"
    hparams_class = AlphaEditHyperParams

    def edit_sequential(
        self,
        model: nn.Module,
        tokenizer,
        requests: Sequence[EditRequest],
        context: EditContext | None = None,
        *,
        state: AlphaEditState | None = None,
        in_place: bool = False,
    ) -> tuple[WeightPatch, AlphaEditState]:
        """Like `edit`, continuing from (and returning) the key cache of earlier batches."""
        return self._edit(model, tokenizer, requests, context or EditContext(), in_place=in_place, state=state)

    def _prepare(self, hp: AlphaEditHyperParams, run: EditRun) -> dict[int, Projector]:
        if not run.stats:
            raise ValueError("AlphaEdit needs the second-moment statistic (mom2_adjustment must be true).")
        projectors = {}
        for layer in hp.layers:
            projector = nullspace_projector(
                run.stats[layer].moment, threshold=hp.nullspace_threshold, energy=hp.nullspace_energy, layer=layer
            )
            log.info(
                "AlphaEdit layer %d: null space keeps %d of %d directions (%s)",
                layer,
                projector.kept,
                projector.total,
                projector.rule,
            )
            if projector.kept == 0:
                log.warning(
                    "AlphaEdit layer %d: no direction is kept, so this layer cannot change. Raise "
                    "nullspace_threshold or use nullspace_energy.",
                    layer,
                )
            projectors[layer] = projector
        run.extra["nullspace"] = {str(layer): p.summary() for layer, p in projectors.items()}
        return projectors

    def _save_state(self, state: AlphaEditState, directory: Path) -> None:
        state.save(directory / "state")

    def _load_state(self, directory: Path, hp: AlphaEditHyperParams) -> AlphaEditState:
        return AlphaEditState.load(directory / "state")

    def _initial_state(self, hp: AlphaEditHyperParams, state: AlphaEditState | None) -> AlphaEditState:
        if state is None:
            return AlphaEditState(list(hp.layers))
        if list(state.layers) != list(hp.layers):
            raise ValueError(f"The AlphaEdit state was built for layers {state.layers}, not {hp.layers}.")
        # A copy: the caller's state is left as it was if this edit fails.
        return AlphaEditState(list(state.layers), dict(state.cache), state.n_edits, state.n_batches)

    def _layer_delta(
        self,
        layer: int,
        residual: torch.Tensor,
        keys: torch.Tensor,
        hp: AlphaEditHyperParams,
        prepared: dict[int, Projector],
        state: AlphaEditState,
    ) -> torch.Tensor:
        m = keys.shape[0]
        previous = state.cache.get(layer)
        if previous is None:
            previous = torch.zeros(m, m, dtype=torch.float64)
        return alphaedit_delta(
            residual, keys, prepared[layer].P.to(keys.device), previous.to(keys.device), hp.L2, layer=layer
        )

    def _after_batch(
        self, edited_keys: dict[int, torch.Tensor], n_requests: int, state: AlphaEditState
    ) -> AlphaEditState:
        # The batch's keys on the edited model join the preserved set (docs/algorithms.md §2, sequential memory).
        for layer, keys in edited_keys.items():
            k = keys.double()
            product = k.T @ k
            state.cache[layer] = state.cache.get(layer, torch.zeros_like(product)) + product
        state.n_edits += n_requests
        state.n_batches += 1
        return state
