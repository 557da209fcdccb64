"""Experiments: the four model groups of one configuration, grids, the artifact store, executors."""

from editdecay.evaluation import GROUPS
from editdecay.experiments.executors import (
    EXECUTORS,
    Executor,
    LocalExecutor,
    RayExecutor,
    make_executor,
    register_executor,
)
from editdecay.experiments.grid import GridPlan, expand_grid, plan_grid
from editdecay.experiments.resolve import ResolvedExperiment, resolve_experiment, stage_keys
from editdecay.experiments.runner import RunResult, run_experiment
from editdecay.experiments.store import ArtifactStore

__all__ = [
    "EXECUTORS",
    "GROUPS",
    "ArtifactStore",
    "Executor",
    "GridPlan",
    "LocalExecutor",
    "RayExecutor",
    "ResolvedExperiment",
    "RunResult",
    "expand_grid",
    "make_executor",
    "plan_grid",
    "register_executor",
    "resolve_experiment",
    "run_experiment",
    "stage_keys",
]
