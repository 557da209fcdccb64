"""Grids: expansion order that maximises artifact reuse, and the dry-run plan of what will run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from editdecay.config import ExperimentConfig, GridConfig
from editdecay.experiments.runner import GROUPS, stage_keys
from editdecay.experiments.store import ArtifactStore


def expand_grid(grid: GridConfig) -> list[ExperimentConfig]:
    """Every combination, ordered so configurations sharing a model, patch or fine-tuning run back to back."""
    return sorted(grid.expand(), key=_reuse_order)


def _reuse_order(config: ExperimentConfig) -> tuple:
    layers = config.finetune.layers
    return (config.model.source, config.model.dtype, config.edits.dataset, config.edits.n, config.edits.seed or -1,
            config.editor.name, config.finetune.method, layers if isinstance(layers, str) else str(layers))


@dataclass
class StagePlan:
    to_run: set[str] = field(default_factory=set)
    cached: set[str] = field(default_factory=set)
    undetermined: int = 0  # keys that depend on a patch not made yet (its edit layers)


@dataclass
class GridPlan:
    configs: int
    complete_runs: int
    stages: dict[str, StagePlan]

    def lines(self) -> list[str]:
        out = [f"{self.configs} configurations, {self.complete_runs} already complete"]
        for name, plan in self.stages.items():
            extra = f" (+{plan.undetermined} that depend on edits not made yet)" if plan.undetermined else ""
            out.append(f"  {name:12s} {len(plan.to_run):4d} to run, {len(plan.cached):4d} cached{extra}")
        return out


def plan_grid(configs: list[ExperimentConfig], store: ArtifactStore, runs_root: Path) -> GridPlan:
    """How many edits, fine-tunings, evaluations and activation analyses a grid needs, and which are cached."""
    stages = {name: StagePlan() for name in ("edits", "fine-tunings", "evaluations", "activations")}
    complete = 0
    for config in configs:
        if (runs_root / config.config_hash() / "DONE").is_file():
            complete += 1
        keys = stage_keys(config)
        layers = _patch_layers(store, keys["patch"])
        if layers is not None or config.finetune.layers == "all":
            keys = stage_keys(config, layers)
            determined = True
        else:
            determined = False
        _count(stages["edits"], store, "patches", keys["patch"], True)
        for name in ("ft_base", "ft_edited"):
            _count(stages["fine-tunings"], store, "finetunes", keys[name], determined)
        evaluations = [f"eval_{g}" for g in GROUPS]
        for name in evaluations:
            _count(stages["evaluations"], store, "evals", keys[name], determined or name == "eval_M")
        if config.evaluation.activations:
            _count(stages["activations"], store, "activations", keys["activations"], determined)
    return GridPlan(len(configs), complete, stages)


def _count(plan: StagePlan, store: ArtifactStore, kind: str, key: str, determined: bool) -> None:
    if not determined:
        plan.undetermined += 1
    elif store.is_done(kind, key):
        plan.cached.add(key)
    else:
        plan.to_run.add(key)


def _patch_layers(store: ArtifactStore, patch_key: str) -> list[int] | None:
    manifest = store.path("patches", patch_key) / "patch" / "manifest.json"
    if not store.is_done("patches", patch_key) or not manifest.is_file():
        return None
    return list(json.loads(manifest.read_text())["layers"])
