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
from editdecay.experiments.keys import data_source_key, model_source_key, stable_hash
from editdecay.experiments.store import ArtifactStore
from editdecay.models import LoadedModel, ModelSpec, load_model

log = logging.getLogger(__name__)

GROUPS = ("M", "Med", "Mft", "Med_ft")


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
    executed: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    base: LoadedModel | None = None
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


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_spec(config: ExperimentConfig) -> ModelSpec:
    return ModelSpec(source=config.model.source, revision=config.model.revision, dtype=config.model.dtype,
                     device=resolve_device(config.model.device))


def stage_keys(config: ExperimentConfig, edit_layers: list[int] | None = None) -> dict[str, str]:
    """The store key of every stage of a configuration (edit layers are known once the patch exists)."""
    spec = model_spec(config)
    model_key = model_source_key(spec)
    edits_key = stable_hash(data_source_key(config.edits.dataset), config.edits.model_dump(mode="json"))
    patch_key = stable_hash("patch", model_key, edits_key, config.editor.model_dump(mode="json"))
    layers = None if config.finetune.layers == "all" else edit_layers
    ft = config.finetune.model_dump(mode="json")
    corpus_key = data_source_key(config.finetune.corpus, "corpus")
    keys = {
        "model": model_key,
        "edits": edits_key,
        "patch": patch_key,
        "ft_base": stable_hash("ft", model_key, ft, corpus_key, layers),
        "ft_edited": stable_hash("ft", patch_key, ft, corpus_key, layers),
    }
    evaluation = config.evaluation.model_dump(mode="json")
    control_key = data_source_key("builtin-control") if config.evaluation.control else None
    group_identity = {"M": keys["model"], "Med": keys["patch"], "Mft": keys["ft_base"], "Med_ft": keys["ft_edited"]}
    for group, identity in group_identity.items():
        keys[f"eval_{group}"] = stable_hash("eval", identity, edits_key, control_key, evaluation)
    keys["activations"] = stable_hash("act", *group_identity.values(), edits_key, evaluation)
    return keys


def run_experiment(config: ExperimentConfig, store_root: str | Path, runs_root: str | Path) -> RunResult:
    """Build M, Med, Mft and Med_ft, evaluate each, and write `runs_root/<config hash>/` (DONE last)."""
    store = ArtifactStore(store_root)
    run_dir = Path(runs_root) / config.config_hash()
    if (run_dir / "DONE").is_file():
        log.info("Run %s is complete already: %s", config.name, run_dir)
        return RunResult(run_dir, config)

    from editdecay.experiments import stages  # heavy imports (editors, peft) only when something runs

    run = _Run(config, store)
    start = time.perf_counter()
    log.info("Experiment %s -> %s", config.name, run_dir)
    requests = load_edit_requests(config.edits.dataset, config.edits.n, seed=config.edits.seed,
                                  zsre_target=config.edits.zsre_target)
    control = (load_edit_requests("builtin-control", config.evaluation.control_n)
               if config.evaluation.control else [])
    run.base = load_model(model_spec(config))
    run.models["M"] = run.base.model

    patch = stages.edit_stage(run, requests, stage_keys(config)["patch"])
    keys = stage_keys(config, patch.layers)
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


