"""`run_experiment`: the four model groups of the study (M, Med, Mft, Med_ft), evaluated, in one run directory.
The groups share one resident model (experiments/resident.py).

Every expensive stage is an artifact in the store, keyed by its inputs: a rerun reuses what exists, a killed
run resumes where it stopped, and configurations that share a stage share its artifact.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from editdecay.config import ExperimentConfig
from editdecay.data import load_edit_requests
from editdecay.evaluation.decay import GROUPS
from editdecay.experiments.context import RunContext
from editdecay.experiments.resolve import model_spec, resolve_experiment, stage_keys
from editdecay.experiments.store import ArtifactStore
from editdecay.models import DtypeResolver, ModelShape, load_model

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


def run_experiment(
    config: ExperimentConfig, store_root: str | Path, runs_root: str | Path, *, dtypes: DtypeResolver | None = None
) -> RunResult:
    """Build M, Med, Mft and Med_ft, evaluate each, and write `runs_root/<config hash>/` (DONE last).
    `dtypes` resolves `auto` dtypes (one resolver per process keeps the probe to one measurement)."""
    store = ArtifactStore(store_root)
    run_dir = Path(runs_root) / config.config_hash()
    if (run_dir / "DONE").is_file():
        log.info("Run %s is complete already: %s", config.name, run_dir)
        return RunResult(run_dir, config)

    from editdecay.experiments import stages  # heavy imports (editors, peft) only when something runs

    dtypes = dtypes or DtypeResolver()
    start = time.perf_counter()
    log.info("Experiment %s -> %s", config.name, run_dir)
    requests = load_edit_requests(
        config.edits.dataset, config.edits.n, seed=config.edits.seed, zsre_target=config.edits.zsre_target
    )
    control = load_edit_requests("builtin-control", config.evaluation.control_n) if config.evaluation.control else []
    base = load_model(model_spec(config))
    run = RunContext(base, resolve_experiment(config, ModelShape.of(base.model), dtypes), store, dtypes)
    keys = stage_keys(run.resolved)

    patch = stages.edit_stage(run, requests, keys["patch"])
    groups, curve = stages.build_groups(run, patch, keys, requests, control)
    scores = {
        group: stages.evaluate_stage(run, groups, group, requests, control, keys[f"eval_{group}"]) for group in GROUPS
    }
    activations = stages.activation_stage(run, groups, requests, keys["activations"], patch.layers)

    stages.write_run_dir(
        run,
        run_dir,
        requests,
        scores,
        activations,
        patch,
        keys,
        wall_seconds=round(time.perf_counter() - start, 2),
        curve=curve,
    )
    return RunResult(run_dir, config, run.executed)
