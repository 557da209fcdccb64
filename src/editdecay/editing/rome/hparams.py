"""ROME's hyperparameters: MEMIT's fields with ROME's constraints (docs/algorithms.md §9)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from editdecay.editing.hparams import MemitHyperParams
from editdecay.models import ModelShape
from editdecay.models.arch import known_model, known_model_named


@dataclass
class RomeHyperParams(MemitHyperParams):
    """One edit layer, one request per update (sequential ROME), about 20 context prefixes for the key.

    The target-value fields (v_*, clamp_norm_factor, kl_factor) and the statistic (mom2_*) keep MEMIT's meaning;
    `mom2_update_weight` is not used: the rank-one solve has no lambda (the statistic's scale cancels).
    """

    batch_size: int | None = 1
    context_template_count: int = 20

    def check(self) -> None:
        super().check()
        if len(self.layers) > 1:
            raise ValueError(f"Invalid RomeHyperParams: ROME edits one layer, got layers={self.layers}")
        if self.batch_size != 1:
            raise ValueError(
                f"Invalid RomeHyperParams: batch_size={self.batch_size}; ROME computes one rank-one update per "
                "request on the model the previous ones edited (batch_size 1). Use MEMIT for batch edits."
            )


# The ROME papers' settings besides the layer (KNOWN_MODELS.rome_layer): 20 steps at lr 0.5, weight decay 0.5,
# clamp 4 x the value's norm, KL factor 0.0625, statistics on Wikipedia.
_PUBLISHED = {
    "v_num_grad_steps": 20,
    "v_lr": 0.5,
    "v_weight_decay": 0.5,
    "clamp_norm_factor": 4.0,
    "kl_factor": 0.0625,
    "mom2_dataset": "wikipedia",
    "mom2_n_samples": 100_000,
    "mom2_n_tokens": 10_000_000,
    "mom2_max_length": 1024,
}
# Built-in models: the MEMIT target settings measured for them (docs/presets.md) at their measured ROME layer.
_MEASURED = {
    "v_num_grad_steps": 12,
    "v_lr": 1.0,
    "v_weight_decay": 1e-3,
    "clamp_norm_factor": 4.0,
    "kl_factor": 0.0625,
    "mom2_dataset": "model-sampled",
    "mom2_n_tokens": 10_000,
}
ROME_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-xl": _PUBLISHED,
    "gpt-j-6b": _PUBLISHED,
    "smollm2-135m": _MEASURED,
    "gemma3-270m": _MEASURED,
}


def rome_preset(name: str) -> dict[str, Any]:
    known = known_model_named(name)
    if name not in ROME_PRESETS or known is None or known.rome_layer is None:
        raise ValueError(f"Unknown ROME preset {name!r}; choose one of {sorted(ROME_PRESETS)}.")
    return {**ROME_PRESETS[name], "layers": [known.rome_layer]}


def rome_preset_for(shape: ModelShape) -> str | None:
    known = known_model(shape)
    if known is None or known.label not in ROME_PRESETS or known.rome_layer is None:
        return None
    return known.label
