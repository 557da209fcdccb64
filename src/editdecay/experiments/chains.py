"""Chains: the configurations of a grid that share one WeightPatch, the unit a cluster executor runs on one worker
(the patch is made once, then each configuration's fine-tuning and evaluation reuse it)."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from editdecay.config import ExperimentConfig
from editdecay.experiments.resolve import patch_chain_key
from editdecay.experiments.runner import run_experiment
from editdecay.models import DtypeResolver


def chains_by_patch(configs: list[ExperimentConfig]) -> list[list[ExperimentConfig]]:
    """Configurations grouped by the WeightPatch they share, each group in the order given."""
    chains: dict[str, list[ExperimentConfig]] = defaultdict(list)
    for config in configs:
        chains[patch_chain_key(config)].append(config)
    return list(chains.values())


def run_chain(config_dicts: list[dict[str, Any]], store_root: str, runs_root: str) -> list[dict[str, Any]]:
    """One task or job: configurations that share a patch, run in order on one worker (paths in, paths out)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = []
    dtypes = DtypeResolver()
    for raw in config_dicts:
        result = run_experiment(ExperimentConfig.model_validate(raw), store_root, runs_root, dtypes=dtypes)
        out.append({"run_dir": str(result.run_dir), "executed": result.executed, "config": raw})
    return out
