"""FT-L (docs/algorithms.md §11): minimise the new targets' NLL over one down projection's weight W, clipping the
change after every optimiser step, W <- W0 + clip(W - W0, -epsilon, epsilon), so |W - W0| <= epsilon holds exactly.

The change D = W - W0 is the trained tensor (float32, whatever the model's dtype), so the patch is D itself and
applying it reproduces the trained weights. No statistic, keys or target values: the editor ignores them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from editdecay.data import EditRequest
from editdecay.editing.configured import ConfiguredEditor, checked_requests, restored_on_exit
from editdecay.editing.edit_loss import model_logits, target_batch, target_nll
from editdecay.editing.ftl.hparams import FtlHyperParams
from editdecay.editing.patch import WeightPatch, add_delta
from editdecay.editing.protocol import EditContext
from editdecay.models import ModelShape, arch_for, default_edit_layers, model_fingerprint
from editdecay.models.arch import known_model, known_model_named

# Measured (docs/algorithms.md §11): SmolLM2-135M's weights need a far wider bound than the published 5e-4, which
# leaves every edit where it was.
FTL_PRESETS: dict[str, dict[str, Any]] = {"smollm2-135m": {"norm_constraint": 2e-2, "lr": 5e-3}}


class FtlEditor(ConfiguredEditor[FtlHyperParams]):
    name = "ftl"
    hparams_class = FtlHyperParams

    @classmethod
    def preset_settings(cls, name: str) -> dict[str, Any]:
        known = known_model_named(name)
        if name not in FTL_PRESETS or known is None or known.rome_layer is None:
            raise ValueError(f"Unknown FT-L preset {name!r}; choose one of {sorted(FTL_PRESETS)}.")
        return {"layers": [known.rome_layer], **FTL_PRESETS[name]}

    @classmethod
    def preset_name_for(cls, shape: ModelShape) -> str | None:
        known = known_model(shape)
        return known.label if known is not None and known.label in FTL_PRESETS else None

    @classmethod
    def fallback_settings(cls, shape: ModelShape) -> dict[str, Any]:
        """The published constrained-FT settings (the class defaults) on the layer ROME edits."""
        known = known_model(shape)
        if known is not None and known.rome_layer is not None:
            return {"layers": [known.rome_layer]}
        window = default_edit_layers(shape)
        return {"layers": [window[len(window) // 2]]}

    def edit(
        self, model: nn.Module, tokenizer: Any, requests: Sequence[EditRequest], context: EditContext | None = None
    ) -> WeightPatch:
        requests = checked_requests(requests)
        context = context or EditContext()
        hp = self.resolved_hparams(model)
        fingerprint = context.fingerprint or model_fingerprint(model)
        name = arch_for(model).mlp_out_weight_name(hp.layers[0])
        weight = model.get_parameter(name)
        device = weight.device
        size = hp.batch_size or len(requests)
        batches = [
            target_batch(tokenizer, [r.prompt for r in part], [r.target_new for r in part]).to(device)
            for part in (requests[i : i + size] for i in range(0, len(requests), size))
        ]
        started = time.perf_counter()
        was_training = model.training
        model.eval()  # no dropout: the edit is deterministic
        grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        losses: list[float] = []
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            with restored_on_exit({name: weight}) as originals:
                with torch.no_grad():
                    before = float(torch.cat([target_nll(model_logits(model, b), b) for b in batches]).mean())
                change = torch.zeros(weight.shape, dtype=torch.float32, device=device, requires_grad=True)
                optimiser = torch.optim.Adam([change], lr=hp.lr, weight_decay=hp.weight_decay)
                weight.requires_grad_(True)
                for _ in range(hp.num_steps):
                    total = 0.0
                    for batch in batches:
                        with torch.no_grad():
                            weight.copy_(add_delta(originals[name], change.detach()))
                        weight.grad = None
                        loss = target_nll(model_logits(model, batch), batch).mean()
                        loss.backward()
                        assert weight.grad is not None
                        optimiser.zero_grad()
                        change.grad = weight.grad.float()
                        optimiser.step()
                        with torch.no_grad():
                            change.clamp_(-hp.norm_constraint, hp.norm_constraint)  # §11: the L-inf bound
                        total += float(loss.detach()) * len(batch.input_ids)
                    losses.append(total / len(requests))
                    if losses[-1] < hp.early_stop_loss:
                        break
                with torch.no_grad():
                    weight.copy_(add_delta(originals[name], change.detach()))
                    final = float(torch.cat([target_nll(model_logits(model, b), b) for b in batches]).mean())
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(grad_flags[n])
            weight.grad = None
            model.train(was_training)
        delta = change.detach()
        manifest = {
            **self.base_manifest(hp, requests, [name], fingerprint),
            "protocol": {"n_requests": len(requests), "batch_size": size, "passes": len(losses), "seed": context.seed},
            "target_nll": {"before": before, "after": final, "per_pass": losses},
            "update_norms": {str(hp.layers[0]): float(delta.norm())},
            "max_abs_change": float(delta.abs().max()),
            "timings": {"total": round(time.perf_counter() - started, 3)},
        }
        return WeightPatch({name: delta}, manifest, requests=requests)
