"""`run_experiment`: the four model groups of the study (M, Med, Mft, Med_ft), evaluated, in one run directory.

Every expensive stage is an artifact in the store, keyed by its inputs: a rerun reuses what exists, a killed
run resumes where it stopped, and configurations that share a stage share its artifact.
"""

from __future__ import annotations

import copy
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from editdecay import __version__
from editdecay.config import ExperimentConfig
from editdecay.data import load_edit_requests
from editdecay.experiments.resolve import GROUPS, ResolvedExperiment, model_spec, resolve_experiment, stage_keys
from editdecay.experiments.store import ArtifactStore
from editdecay.models import DtypeResolver, LoadedModel, ModelShape, load_model

log = logging.getLogger(__name__)

__all__ = ["GROUPS", "RunResult", "run_experiment"]


@dataclass
class RunResult:
    run_dir: Path
    config: ExperimentConfig
    executed: list[str] = field(default_factory=list)  # stages computed by this call (empty: all reused)

    @property
    def run_id(self) -> str:
        return self.config.config_hash()


@dataclass
class _Run:
    """What one run has loaded and which stages it executed."""

    config: ExperimentConfig
    store: ArtifactStore
    dtypes: DtypeResolver
    executed: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    base: LoadedModel | None = None
    resolved: ResolvedExperiment | None = None
    models: dict[str, nn.Module] = field(default_factory=dict)

    def stage(self, name: str, kind: str, key: str, compute: Callable[[Path], None]) -> Path:
        with self.store.lock(kind, key) as path:
            if self.store.is_done(kind, key):
                log.info("%-22s reused  %s", name, path)
                return path
            log.info("%-22s running -> %s", name, path)
            start = time.perf_counter()
            path.mkdir(parents=True, exist_ok=True)
            compute(path)
            self.store.mark_done(kind, key)
            self.timings[name] = round(time.perf_counter() - start, 2)
            self.executed.append(name)
            return path


def run_experiment(config: ExperimentConfig, store_root: str | Path, runs_root: str | Path, *,
                   dtypes: DtypeResolver | None = None) -> RunResult:
    """Build M, Med, Mft and Med_ft, evaluate each, and write `runs_root/<config hash>/` (DONE last).
    `dtypes` resolves `auto` dtypes (one resolver per process keeps the probe to one measurement)."""
    store = ArtifactStore(store_root)
    run_dir = Path(runs_root) / config.config_hash()
    if (run_dir / "DONE").is_file():
        log.info("Run %s is complete already: %s", config.name, run_dir)
        return RunResult(run_dir, config)

    from editdecay.experiments import stages  # heavy imports (editors, peft) only when something runs

    run = _Run(config, store, dtypes or DtypeResolver())
    start = time.perf_counter()
    log.info("Experiment %s -> %s", config.name, run_dir)
    requests = load_edit_requests(config.edits.dataset, config.edits.n, seed=config.edits.seed,
                                  zsre_target=config.edits.zsre_target)
    control = (load_edit_requests("builtin-control", config.evaluation.control_n)
               if config.evaluation.control else [])
    run.base = load_model(model_spec(config))
    run.models["M"] = run.base.model
    run.resolved = resolve_experiment(config, ModelShape.of(run.base.model), run.dtypes)
    keys = stage_keys(run.resolved)

    patch = stages.edit_stage(run, requests, keys["patch"])
    stages.build_groups(run, patch, keys)
    tables = {group: stages.evaluate_stage(run, group, requests, control, keys[f"eval_{group}"]) for group in GROUPS}
    activations = stages.activation_stage(run, requests, keys["activations"], patch.layers)

    stages.write_run_dir(run, run_dir, requests, tables, activations, patch, keys,
                         wall_seconds=round(time.perf_counter() - start, 2))
    return RunResult(run_dir, config, run.executed)


def environment_info() -> dict[str, Any]:
    import peft
    import transformers

    return {"editdecay": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def with_group(table: pd.DataFrame, group: str) -> pd.DataFrame:
    table = table.copy()
    table.insert(0, "group", group)
    return table


def deep_copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


