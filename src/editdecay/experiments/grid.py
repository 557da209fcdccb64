"""Grids: expansion order that maximises artifact reuse, and the dry-run plan of what will run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from editdecay.config import ExperimentConfig, GridConfig
from editdecay.durability import STRATEGIES
from editdecay.evaluation import GROUPS
from editdecay.experiments.resolve import model_spec, resolve_experiment, stage_keys, written_keys
from editdecay.experiments.store import ArtifactStore
from editdecay.models import DtypeResolver, ModelShape, ModelSpec, read_model_shape


def expand_grid(grid: GridConfig) -> list[ExperimentConfig]:
    """Every combination, ordered so configurations sharing a model, patch or fine-tuning run back to back."""
    return sorted(grid.expand(), key=_reuse_order)


def _reuse_order(config: ExperimentConfig) -> tuple:
    layers = config.finetune.layers
    return (
        config.model.source,
        config.model.dtype,
        config.edits.dataset,
        config.edits.n,
        config.edits.seed or -1,
        config.editor.name,
        config.finetune.method,
        layers if isinstance(layers, str) else str(layers),
    )


@dataclass
class StagePlan:
    to_run: set[str] = field(default_factory=set)
    cached: set[str] = field(default_factory=set)
    # stages of configurations whose model config is not readable here, counted from the config as written
    undetermined: set[str] = field(default_factory=set)


@dataclass
class GridPlan:
    configs: int
    complete_runs: int
    stages: dict[str, StagePlan]

    def lines(self) -> list[str]:
        out = [f"{self.configs} configurations, {self.complete_runs} already complete"]
        for name, plan in self.stages.items():
            extra = (
                f" ({len(plan.undetermined)} of them for models whose config is not in the local cache: "
                "counted from the config as written, cache status unknown)"
                if plan.undetermined
                else ""
            )
            to_run = len(plan.to_run) + len(plan.undetermined)
            out.append(f"  {name:12s} {to_run:4d} to run, {len(plan.cached):4d} cached{extra}")
        return out


def plan_grid(
    configs: list[ExperimentConfig], store: ArtifactStore, runs_root: Path, dtypes: DtypeResolver | None = None
) -> GridPlan:
    """How many edits, fine-tunings, evaluations and activation analyses a grid needs, and which are cached.
    Keys are resolved as the run resolves them (model shape from its config, `auto` dtypes probed here)."""
    dtypes = dtypes or DtypeResolver()
    stages = {name: StagePlan() for name in ("edits", "fine-tunings", "evaluations", "activations")}
    shapes: dict[ModelSpec, ModelShape | None] = {}
    complete = 0
    for config in configs:
        if (runs_root / config.config_hash() / "DONE").is_file():
            complete += 1
        spec = model_spec(config)
        if spec not in shapes:
            shapes[spec] = read_model_shape(spec)
        shape = shapes[spec]
        known = shape is not None
        keys = stage_keys(resolve_experiment(config, shape, dtypes)) if shape is not None else written_keys(config)
        _count(stages["edits"], store, "patches", keys["patch"], known)
        _count(stages["fine-tunings"], store, "finetunes", keys["ft_base"], known)
        if STRATEGIES[config.finetune.strategy].reedits:  # Med_ft is an edit of Mft, not a fine-tuning
            _count(stages["edits"], store, "patches", keys["ft_edited"], known)
        else:
            _count(stages["fine-tunings"], store, "finetunes", keys["ft_edited"], known)
        for group in GROUPS:
            _count(stages["evaluations"], store, "evals", keys[f"eval_{group}"], known)
        if config.evaluation.activations:
            _count(stages["activations"], store, "activations", keys["activations"], known)
    return GridPlan(len(configs), complete, stages)


def _count(plan: StagePlan, store: ArtifactStore, kind: str, key: str, known: bool) -> None:
    if not known:
        plan.undetermined.add(key)
    elif store.is_done(kind, key):
        plan.cached.add(key)
    else:
        plan.to_run.add(key)
