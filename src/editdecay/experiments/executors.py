"""Executors run a list of configurations: in this process (`local`), as Ray tasks (`ray`) or as a Slurm job array
through submitit (`submitit`, experiments/submitit_executor.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from editdecay.config import ExperimentConfig
from editdecay.experiments.chains import chains_by_patch, run_chain
from editdecay.experiments.runner import RunResult, run_experiment
from editdecay.experiments.submitit_executor import SubmititExecutor
from editdecay.models import DtypeResolver

log = logging.getLogger(__name__)


class Executor(Protocol):
    name: str

    def run(self, configs: list[ExperimentConfig], store_root: Path, runs_root: Path) -> list[RunResult]: ...


class LocalExecutor:
    """Configurations one after another in this process, in the order given (see `expand_grid`)."""

    name = "local"

    def run(self, configs: list[ExperimentConfig], store_root: Path, runs_root: Path) -> list[RunResult]:
        dtypes = DtypeResolver()  # one probe per device for the whole grid
        results = []
        for config in tqdm(configs, desc="grid", unit="config"):
            results.append(run_experiment(config, store_root, runs_root, dtypes=dtypes))
        return results


class RayExecutor:
    """Each chain of configurations sharing a WeightPatch becomes one Ray task.

    Tasks are idempotent (keyed by config hash, artifacts by content), pass artifacts by path (the store and
    runs directories must be on a filesystem every node sees), and ask for a GPU when the cluster has one.
    `address=None` starts a local cluster; `address="auto"` or "ray://host:10001" joins an existing one.
    """

    name = "ray"

    def __init__(
        self, address: str | None = None, num_cpus_per_task: float = 1.0, ray_init: dict[str, Any] | None = None
    ) -> None:
        self.address = address
        self.num_cpus_per_task = num_cpus_per_task
        self.ray_init = ray_init or {}

    def run(self, configs: list[ExperimentConfig], store_root: Path, runs_root: Path) -> list[RunResult]:
        try:
            import ray
        except ImportError as err:
            raise RuntimeError("The ray executor needs Ray: pip install 'editdecay[ray]'") from err

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True, **self.ray_init)
        try:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            task = ray.remote(num_cpus=self.num_cpus_per_task, num_gpus=gpus, max_retries=2)(run_chain)
            chains = chains_by_patch(configs)
            log.info(
                "Submitting %d Ray tasks for %d configurations (GPU per task: %d)", len(chains), len(configs), gpus
            )
            store, runs = str(Path(store_root).resolve()), str(Path(runs_root).resolve())
            futures = [task.remote([c.model_dump(mode="json") for c in chain], store, runs) for chain in chains]
            outputs = []
            with tqdm(total=len(futures), desc="ray tasks", unit="task") as bar:
                pending = list(futures)
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    outputs.extend(ray.get(done[0]))
                    bar.update(1)
        finally:
            if started_here:
                ray.shutdown()
        by_hash = {Path(o["run_dir"]).name: o for o in outputs}
        return [
            RunResult(Path(by_hash[c.config_hash()]["run_dir"]), c, by_hash[c.config_hash()]["executed"])
            for c in configs
        ]


EXECUTORS: dict[str, Callable[..., Executor]] = {}


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Add (or replace) an executor: `factory(**options)` returns an object whose `run(configs, store_root,
    runs_root)` runs every configuration (idempotently: a complete run directory is skipped)."""
    EXECUTORS[name] = factory


register_executor(LocalExecutor.name, LocalExecutor)
register_executor(RayExecutor.name, RayExecutor)
register_executor(SubmititExecutor.name, SubmititExecutor)


def make_executor(name: str, **options: Any) -> Executor:
    if name not in EXECUTORS:
        raise ValueError(f"Unknown executor {name!r}; choose one of {sorted(EXECUTORS)}.")
    return EXECUTORS[name](**options)
