"""A finished fine-tuning run on disk, and rebuilding the fine-tuned model from it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from editdecay.finetuning.methods import FINETUNE_METHODS
from editdecay.finetuning.spec import FinetuneSpec
from editdecay.models import model_fingerprint

MANIFEST = "manifest.json"
CURVE = "curve.parquet"
RESULT_FORMAT = "editdecay-finetune/1"


@dataclass(frozen=True)
class FinetuneResult:
    """A completed run: `path` holds `manifest.json` plus a PEFT adapter (`adapter/`) or `delta.safetensors`, and
    `curve.parquet` when the run was probed during training."""

    path: Path
    method: str
    manifest: dict[str, Any]
    train_losses: list[float]
    val_loss: float | None

    @property
    def spec(self) -> FinetuneSpec:
        return FinetuneSpec.from_dict(self.manifest["spec"])

    @property
    def curve(self) -> pd.DataFrame | None:
        """The rows a `CurveProbe` measured during training (a `step` column plus the probe's), or None."""
        file = self.path / CURVE
        return pd.read_parquet(file) if file.is_file() else None

    @classmethod
    def load(cls, path: str | Path) -> FinetuneResult:
        path = Path(path)
        manifest_file = path / MANIFEST
        if not manifest_file.is_file():
            raise FileNotFoundError(
                f"No fine-tuning result at {path}: {MANIFEST} is missing (the run did not finish, or this is "
                "not a result directory)."
            )
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("format") != RESULT_FORMAT:
            raise ValueError(f"{manifest_file} has format {manifest.get('format')!r}; expected {RESULT_FORMAT!r}.")
        return cls(path, manifest["method"], manifest, list(manifest["train_losses"]), manifest.get("val_loss"))


def load_finetuned(
    base_model: nn.Module, result: FinetuneResult | str | Path, *, merge: bool = False, check_base: bool = True
) -> nn.Module:
    """A NEW model: `base_model` (left untouched) plus the fine-tuning result, in eval mode.

    Full fine-tuning adds the stored float32 delta. LoRA/DoRA with `merge=False` returns the base architecture
    with PEFT adapter layers inside (module paths unchanged, hooks see the adapted outputs); `merge=True` merges
    the adapter into float32 weights. Either way the model comes back in `base_model`'s dtype, so it is
    evaluated in the same precision as its base. With
    `check_base`, the base must have the weights the run was trained from (its fingerprint).
    """
    if not isinstance(result, FinetuneResult):
        result = FinetuneResult.load(result)
    if check_base:
        expected = result.manifest["model_fingerprint"]
        actual = model_fingerprint(base_model)
        if actual != expected:
            raise ValueError(
                f"{result.path} was fine-tuned from a model with fingerprint {expected}, but this base model has "
                f"{actual}. Load the same model in the same dtype, with the same WeightPatch applied (if any), "
                "or pass check_base=False to apply it anyway."
            )
    if result.method not in FINETUNE_METHODS:
        raise ValueError(f"{result.path} used method {result.method!r}, which is not registered here.")
    return FINETUNE_METHODS[result.method].load(base_model, result.path, merge)
