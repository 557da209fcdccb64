"""`RunContext`: what one run has loaded and resolved, and the stages it executed; built once, after the base
model is loaded and the configuration resolved, and passed to every stage (experiments/stages.py)."""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from editdecay.config import ExperimentConfig
from editdecay.experiments.resolve import ResolvedExperiment
from editdecay.experiments.store import ArtifactStore
from editdecay.models import DtypeResolver, LoadedModel

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """The base model M, the resolved configuration, the store, and what the run's stages executed."""

    base: LoadedModel
    resolved: ResolvedExperiment
    store: ArtifactStore
    dtypes: DtypeResolver
    executed: list[str] = field(default_factory=list)  # stages computed by this run (the rest were reused)
    timings: dict[str, float] = field(default_factory=dict)
    # the process's peak resident memory (MiB) when each executed stage ended: a high-water mark, so a stage's
    # own peak is at most its figure (and exactly it when the figure rises at that stage)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)

    @property
    def config(self) -> ExperimentConfig:
        return self.resolved.config

    def stage(self, name: str, kind: str, key: str, compute: Callable[[Path], None]) -> Path:
        """The artifact `kind/key`: reused when it is done, else made by `compute(path)` under the store's lock."""
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
            self.peak_rss_mib[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            self.executed.append(name)
            return path
