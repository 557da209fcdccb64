"""The null-space check of a finished run (docs/algorithms.md §16): rebuilt from its artifacts in the store.

For every edited layer: the edit's update (the WeightPatch), the fine-tuning's update (Med_ft merged minus Med),
the edit keys (each subject's key at that layer on the bare prompt, computed on M; the editor also averaged over
context templates, so these are the keys up to that averaging) and AlphaEdit's null-space projector of the same
second-moment statistic the editors used (cached in the store), whichever editor made the patch.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import torch

from editdecay.config import validate_experiment
from editdecay.data import load_edit_requests
from editdecay.editing import StatsStore, WeightPatch
from editdecay.editing.hparams import AlphaEditHyperParams
from editdecay.editing.solve import nullspace_projector
from editdecay.editing.subject_keys import compute_keys
from editdecay.evaluation.geometry import update_geometry
from editdecay.experiments.resolve import model_spec
from editdecay.experiments.store import ArtifactStore
from editdecay.finetuning import FinetuneResult, load_finetuned
from editdecay.models import arch_for, load_model


def run_geometry(run_dir: str | Path, store: ArtifactStore) -> pd.DataFrame:
    """One row per edited layer of the run: `update_geometry` plus the run's editor, method and layer policy."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    config = validate_experiment(summary["config"], origin=str(run_dir / "summary.json"))
    artifacts, hparams = summary["artifacts"], summary["resolved"]["editor_hparams"]
    patch_dir = store.path("patches", artifacts["patch"]) / "patch"
    result_dir = store.path("finetunes", artifacts["ft_edited"]) / "result"
    for needed in (patch_dir, result_dir):
        if not needed.is_dir():
            raise FileNotFoundError(f"{run_dir.name}: {needed} is not in the store; pass the store the run used.")
    base = load_model(model_spec(config))
    requests = load_edit_requests(
        config.edits.dataset, config.edits.n, seed=config.edits.seed, zsre_target=config.edits.zsre_target
    )
    patch = WeightPatch.load(patch_dir)
    med = copy.deepcopy(base.model)
    patch.apply(med, fingerprint=base.fingerprint)
    med_ft = load_finetuned(med, FinetuneResult.load(result_dir), merge=True)
    layers = patch.layers
    moments = StatsStore(store.stats_root).get(
        base.model,
        base.tokenizer,
        layers,
        corpus=hparams["mom2_dataset"],
        n_tokens=hparams["mom2_n_tokens"],
        dtype=hparams["mom2_dtype"],
        fingerprint=base.fingerprint,
        max_length=hparams["mom2_max_length"],
    )
    defaults = AlphaEditHyperParams()
    threshold = hparams.get("nullspace_threshold", defaults.nullspace_threshold)
    energy = hparams.get("nullspace_energy", defaults.nullspace_energy)
    with torch.no_grad():
        keys = compute_keys(base.model, base.tokenizer, requests, ["{}"], layers).keys
    arch = arch_for(base.model)
    rows = []
    for layer in layers:
        name = arch.mlp_out_weight_name(layer)
        edit = patch.deltas[name].double()
        ft = med_ft.get_parameter(name).detach().double() - med.get_parameter(name).detach().double()
        K = keys[layer].double().T  # (m, n)
        if edit.shape[1] != K.shape[0]:  # GPT-2's Conv1D stores (in, out)
            edit, ft = edit.T, ft.T
        projector = nullspace_projector(moments[layer], threshold=threshold, energy=energy, layer=layer)
        rows.append(
            {
                "run_id": summary["run_id"],
                "model": config.model.source,
                "editor": config.editor.name,
                "ft_method": config.finetune.method,
                "ft_layers": str(config.finetune.layers),
                "layer": layer,
                "null_dims": projector.kept,
                **update_geometry(edit, ft, K, projector.P),
            }
        )
    return pd.DataFrame(rows)


def geometry_table(runs_dir: str | Path, store: ArtifactStore) -> pd.DataFrame:
    """`run_geometry` of every complete run under `runs_dir` whose artifacts the store holds."""
    frames = [run_geometry(done.parent, store) for done in sorted(Path(runs_dir).glob("*/DONE"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def key_drift(med: torch.nn.Module, med_ft: torch.nn.Module, tokenizer, patch: WeightPatch, requests) -> pd.DataFrame:
    """Per edited layer, why an edit can decay although its layer keeps answering its keys (`protect`, §13):
    key_drift = mean_i ||k'_i - k_i|| / ||k_i|| (the edit keys on Med_ft vs Med, averaged over the patch's context
    templates as the editor averaged them, so Med's keys are the patch's own), old_key_change =
    mean_i ||W' k_i - W k_i|| / ||ΔW_ed k_i|| (the layer's answer to the *old* keys, relative to what the edit wrote
    there: 0 under protect) and new_key_change = mean_i ||W' k'_i - W k_i|| / ||ΔW_ed k_i|| (what reaches the
    residual stream now)."""
    arch = arch_for(med)
    layers = patch.layers
    contexts = patch.manifest.get("context_templates") or ["{}"]
    with torch.no_grad():
        before = compute_keys(med, tokenizer, requests, contexts, layers).keys
        after = compute_keys(med_ft, tokenizer, requests, contexts, layers).keys
    rows = []
    for layer in layers:
        name = arch.mlp_out_weight_name(layer)
        W, W_ft = (m.get_parameter(name).detach().double() for m in (med, med_ft))
        edit = patch.deltas[name].double()
        if arch.mlp_out_transposed:
            W, W_ft, edit = W.T, W_ft.T, edit.T
        k, k_ft = before[layer].double(), after[layer].double()  # (n, m)
        written = (k @ edit.T).norm(dim=1).clamp_min(1e-12)
        rows.append(
            {
                "layer": layer,
                "key_drift": float(((k_ft - k).norm(dim=1) / k.norm(dim=1).clamp_min(1e-12)).mean()),
                "old_key_change": float(((k @ (W_ft - W).T).norm(dim=1) / written).mean()),
                "new_key_change": float(((k_ft @ W_ft.T - k @ W.T).norm(dim=1) / written).mean()),
            }
        )
    return pd.DataFrame(rows)


def run_key_drift(run_dir: str | Path, store: ArtifactStore) -> pd.DataFrame:
    """`key_drift` of a finished run (a fine-tuned Med_ft; not `reedit`), rebuilt from the store."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    config = validate_experiment(summary["config"], origin=str(run_dir / "summary.json"))
    artifacts = summary["artifacts"]
    patch = WeightPatch.load(store.path("patches", artifacts["patch"]) / "patch")
    result_dir = store.path("finetunes", artifacts["ft_edited"]) / "result"
    if not result_dir.is_dir():
        raise FileNotFoundError(f"{run_dir.name}: no fine-tuning result {result_dir} (a reedit run has none).")
    base = load_model(model_spec(config))
    med = copy.deepcopy(base.model)
    patch.apply(med, fingerprint=base.fingerprint)
    med_ft = load_finetuned(med, FinetuneResult.load(result_dir), merge=True)
    requests = patch.requests or load_edit_requests(
        config.edits.dataset, config.edits.n, seed=config.edits.seed, zsre_target=config.edits.zsre_target
    )
    table = key_drift(med, med_ft, base.tokenizer, patch, requests)
    table.insert(0, "strategy", config.finetune.strategy)
    table.insert(0, "ft_lr", summary["resolved"]["finetune_spec"]["lr"])
    table.insert(0, "editor", config.editor.name)
    return table
