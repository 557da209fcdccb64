"""MEND (Mitchell et al., ICLR 2022; docs/algorithms.md §10) as an editor: the trained network (MendStore; trained
on first use) turns each batch's edit-loss gradient factors into Delta W = -alpha_l sum_t delta~_t u~_t^T per edited
MLP output projection. Batches are applied one after another, each computed on the model the earlier ones edited,
and the sum is one WeightPatch like any editor's.

The published MEND edits both MLP matrices of the last 3 blocks; we edit their output projections (the matrices
every editor here edits), so one patch format serves all editors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from editdecay.data import EditRequest
from editdecay.editing.configured import ConfiguredEditor, checked_requests, restored_on_exit
from editdecay.editing.edit_loss import model_logits, target_nll
from editdecay.editing.mend.apply import EditedLayers, edit_batch, edit_factors, network_deltas
from editdecay.editing.mend.hparams import MendHyperParams
from editdecay.editing.mend.store import MendStore
from editdecay.editing.mend.training import frozen, training_records
from editdecay.editing.patch import WeightPatch, add_delta, delta_dtype
from editdecay.editing.protocol import EditContext
from editdecay.models import ModelShape, default_cache_dir, model_fingerprint

log = logging.getLogger(__name__)


class MendEditor(ConfiguredEditor[MendHyperParams]):
    name = "mend"
    hparams_class = MendHyperParams

    @classmethod
    def preset_settings(cls, name: str) -> dict[str, Any]:
        raise ValueError(f"MEND has no named presets (got {name!r}); its network is trained for each model.")

    @classmethod
    def preset_name_for(cls, shape: ModelShape) -> str | None:
        return None

    @classmethod
    def fallback_settings(cls, shape: ModelShape) -> dict[str, Any]:
        return {"layers": list(range(max(shape.num_layers - 3, 0), shape.num_layers))}

    def merged_hparams(self, shape: ModelShape) -> MendHyperParams:
        # No presets: the defaults are the published settings and the layers the last 3 blocks (no warning).
        return self.hparams_class.from_dict({**self.fallback_settings(shape), **self.overrides}, source=self.source)

    def edit(
        self, model: nn.Module, tokenizer: Any, requests: Sequence[EditRequest], context: EditContext | None = None
    ) -> WeightPatch:
        requests = checked_requests(requests)
        context = context or EditContext()
        hp = self.resolved_hparams(model)
        fingerprint = context.fingerprint or model_fingerprint(model)
        started = time.perf_counter()
        store = MendStore((context.artifacts or default_cache_dir() / "editors") / "mend")
        records = training_records(hp)
        trained = store.get(model, tokenizer, hp, fingerprint, records=records)
        # Editing what the network was trained on measures memory, not editing: say so.
        seen = {(r.prompt, r.target_new) for r in records.train}
        overlap = sum((r.prompt, r.target_new) in seen for r in requests)
        if overlap:
            log.warning(
                "%d of the %d requests are among MEND's training records (%s); its scores on them are not held out.",
                overlap,
                len(requests),
                hp.train_data,
            )
        trained_at = time.perf_counter()
        edited = EditedLayers.of(model, hp.layers)
        params = {name: model.get_parameter(name) for name in edited.weight_names}
        totals = {name: torch.zeros(p.shape, dtype=delta_dtype(p.dtype), device=p.device) for name, p in params.items()}
        device = next(model.parameters()).device
        everything = edit_batch(tokenizer, requests).to(device)
        with frozen(model), restored_on_exit(params) as originals:
            with torch.no_grad():
                before = target_nll(model_logits(model, everything), everything)
            for first in range(0, len(requests), hp.batch_size):
                batch = edit_batch(tokenizer, requests[first : first + hp.batch_size]).to(device)
                factors = edit_factors(model, edited, batch)
                with torch.no_grad():
                    for name, delta in network_deltas(trained.network, edited, factors).items():
                        totals[name] += delta.to(totals[name].dtype)
                        params[name].copy_(add_delta(originals[name], totals[name]))
            with torch.no_grad():
                after = target_nll(model_logits(model, everything), everything)
        manifest = {
            **self.base_manifest(hp, requests, edited.weight_names, fingerprint),
            "protocol": {
                "n_requests": len(requests),
                "batch_size": hp.batch_size,
                "n_batches": -(-len(requests) // hp.batch_size),
                "sequential": hp.batch_size < len(requests),
                "seed": context.seed,
            },
            "training": trained.meta,
            "requests_in_training_records": overlap,
            "target_nll": {"before": float(before.mean()), "after": float(after.mean())},
            "update_norms": {
                str(layer): float(totals[n].norm()) for layer, n in zip(hp.layers, edited.weight_names, strict=True)
            },
            "timings": {"network": round(trained_at - started, 3), "total": round(time.perf_counter() - started, 3)},
        }
        return WeightPatch(totals, manifest, requests=requests)
