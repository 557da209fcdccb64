"""The `submitit` executor: a grid as one Slurm job array (or, without Slurm, submitit's local subprocess jobs).

Each chain of configurations sharing a WeightPatch is one job (array element), run in order on one node, so a
patch is made once and reused by its fine-tunings. Jobs are idempotent like every executor's: configurations
whose run directory is complete are not submitted, and artifacts are keyed by content, so a resubmitted grid
runs only what is missing. Jobs read and write the store and the runs directory by path: both must be on a
filesystem the compute nodes share, which every job checks first (a token file written here must be readable
there) before it touches anything.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from editdecay.config import ExperimentConfig
from editdecay.experiments.chains import chains_by_patch, run_chain
from editdecay.experiments.runner import RunResult

log = logging.getLogger(__name__)

SHARED_CHECK_DIR = ".shared-check"
# Paths that are node-local on (almost) every cluster: a store there cannot be shared.
NODE_LOCAL_PREFIXES = ("/tmp", "/dev/shm", "/var/tmp")


class SharedFilesystemError(RuntimeError):
    """A job cannot see the store or the runs directory the grid was submitted with."""


def checked_chain(config_dicts: list[dict[str, Any]], store_root: str, runs_root: str, token: str) -> list[dict]:
    """One job: check that this node sees the submitter's store and runs directory, then run the chain."""
    for root in (store_root, runs_root):
        if not (Path(root) / SHARED_CHECK_DIR / token).is_file():
            raise SharedFilesystemError(
                f"{root} as written by the submitting machine is not visible from this node: put --store and --runs "
                "on a filesystem the compute nodes share (NFS, Lustre, a shared home or scratch), not a node-local "
                "disk."
            )
    return run_chain(config_dicts, store_root, runs_root)


class SubmititExecutor:
    """`cluster`: "slurm", "local" (subprocesses of this machine), "debug" (in this process) or None (Slurm when
    `srun` is available, else local). Resources are per job: `gpus_per_job` GPUs (editing and fine-tuning use
    them; 0 on CPU nodes), `cpus_per_job` CPUs, `mem_gb`, a time limit of `timeout_min`, at most
    `array_parallelism` jobs running at once, and any other submitit/Slurm parameter in `parameters`
    (e.g. {"slurm_account": "proj42", "slurm_qos": "normal"})."""

    name = "submitit"

    def __init__(
        self,
        folder: str | Path | None = None,
        cluster: str | None = None,
        partition: str | None = None,
        gpus_per_job: int = 0,
        cpus_per_job: int = 2,
        mem_gb: float | None = None,
        timeout_min: int = 240,
        array_parallelism: int = 16,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        if cluster not in (None, "slurm", "local", "debug"):
            raise ValueError(f"cluster {cluster!r}: use slurm, local, debug or None (auto).")
        self.folder = Path(folder) if folder is not None else None
        self.cluster = cluster
        self.partition = partition
        self.gpus_per_job, self.cpus_per_job, self.mem_gb = gpus_per_job, cpus_per_job, mem_gb
        self.timeout_min, self.array_parallelism = timeout_min, array_parallelism
        self.parameters = dict(parameters or {})

    def run(self, configs: list[ExperimentConfig], store_root: Path, runs_root: Path) -> list[RunResult]:
        try:
            import submitit
        except ImportError as err:
            raise RuntimeError("The submitit executor needs submitit: pip install 'editdecay[slurm]'") from err

        store, runs = Path(store_root).resolve(), Path(runs_root).resolve()
        done = {c.config_hash() for c in configs if (runs / c.config_hash() / "DONE").is_file()}
        todo = [c for c in configs if c.config_hash() not in done]
        outputs: list[dict[str, Any]] = []
        if todo:
            executor = submitit.AutoExecutor(folder=str(self.folder or runs / ".submitit" / "%j"), cluster=self.cluster)
            if executor.cluster == "slurm":
                self._warn_if_node_local(store, runs)
            executor.update_parameters(**self._job_parameters())
            token = self._write_tokens(store, runs)
            chains = chains_by_patch(todo)
            dicts = [[c.model_dump(mode="json") for c in chain] for chain in chains]
            log.info("Submitting %d jobs (%s) for %d configurations", len(chains), executor.cluster, len(todo))
            jobs = executor.map_array(
                checked_chain, dicts, [str(store)] * len(dicts), [str(runs)] * len(dicts), [token] * len(dicts)
            )
            for job in tqdm(jobs, desc="submitit jobs", unit="job"):
                outputs.extend(job.result())
        log.info("%d configurations were complete already and were not submitted", len(done))
        by_hash = {Path(o["run_dir"]).name: o for o in outputs}
        results = []
        for config in configs:
            key = config.config_hash()
            executed = by_hash[key]["executed"] if key in by_hash else []
            results.append(RunResult(runs / key, config, executed))
        return results

    def _job_parameters(self) -> dict[str, Any]:
        parameters: dict[str, Any] = {
            "name": "editdecay",
            "timeout_min": self.timeout_min,
            "cpus_per_task": self.cpus_per_job,
            "gpus_per_node": self.gpus_per_job,
            "slurm_array_parallelism": self.array_parallelism,
        }
        if self.mem_gb is not None:
            parameters["mem_gb"] = self.mem_gb
        if self.partition is not None:
            parameters["slurm_partition"] = self.partition
        return {**parameters, **self.parameters}

    @staticmethod
    def _write_tokens(store: Path, runs: Path) -> str:
        token = uuid.uuid4().hex
        for root in (store, runs):
            directory = root / SHARED_CHECK_DIR
            directory.mkdir(parents=True, exist_ok=True)
            (directory / token).write_text("written by the submitting machine\n")
        return token

    @staticmethod
    def _warn_if_node_local(store: Path, runs: Path) -> None:
        for root in (store, runs):
            if str(root).startswith(NODE_LOCAL_PREFIXES):
                log.warning(
                    "%s is on a node-local path: Slurm jobs on other nodes will not see it (each job checks, and "
                    "fails with a clear error). Use a shared filesystem for --store and --runs.",
                    root,
                )
