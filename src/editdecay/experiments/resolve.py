"""An experiment's configuration resolved: presets, defaults and `auto` dtypes made concrete, and the store keys
built from that resolution, so a changed preset, default or machine can never reuse a stale artifact.

Resolution needs only the model's shape (`ModelShape`, readable from its config without the weights), so a
grid's dry run computes the same keys as the run itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from editdecay.config import ExperimentConfig
from editdecay.durability import STRATEGIES
from editdecay.editing import build_editor
from editdecay.editing.patch import PATCH_FORMAT
from editdecay.experiments.artifact_keys import data_source_key, model_source_key, stable_hash
from editdecay.finetuning import FinetuneSpec
from editdecay.finetuning.result import RESULT_FORMAT
from editdecay.models import DtypeResolver, ModelShape, ModelSpec

# Bump when the code that writes these artifacts changes what they hold (evaluation/groups.py: GroupScores.save,
# group_activations; experiments/stages.py).
EVAL_FORMAT = "eval/3"  # 3: the generation-based family (gen_*) in the scored tables
ACTIVATIONS_FORMAT = "activations/2"
CURVE_FORMAT = "curve/1"


@dataclass(frozen=True)
class ResolvedExperiment:
    """What the stages of one configuration will actually use on `device`."""

    config: ExperimentConfig
    device: str
    editor_hparams: dict[str, Any]  # the editor's full hyperparameters after its preset, `v_dtype` concrete
    finetune_spec: FinetuneSpec  # after FinetuneSpec's defaults, `compute_dtype` concrete

    @property
    def edit_layers(self) -> list[int]:
        return list(self.editor_hparams["layers"])


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_spec(config: ExperimentConfig) -> ModelSpec:
    return ModelSpec(
        source=config.model.source,
        revision=config.model.revision,
        dtype=config.model.dtype,
        device=resolve_device(config.model.device),
    )


def editor_hparams(config: ExperimentConfig) -> dict[str, Any]:
    """The editor's hyperparameter overrides as configured (checked against its hparams class at load time)."""
    return dict(config.editor.hparams)


def finetune_spec(config: ExperimentConfig) -> FinetuneSpec:
    """The fine-tuning spec as configured (`compute_dtype` may still be `auto`)."""
    return config.finetune.spec()


def resolve_experiment(config: ExperimentConfig, shape: ModelShape, dtypes: DtypeResolver) -> ResolvedExperiment:
    device = model_spec(config).device
    editor = build_editor(
        config.editor.name, editor_hparams(config) or None, preset=config.editor.preset, dtypes=dtypes
    )
    hparams = editor.resolved_hparams(shape, device).to_dict()
    spec = finetune_spec(config).with_resolved_dtype(dtypes, shape, device)
    return ResolvedExperiment(config, device, hparams, spec)


def stage_keys(resolved: ResolvedExperiment) -> dict[str, str]:
    """The store key of every stage of a configuration, from its resolved form and each artifact's format."""
    config = resolved.config
    model_key = model_source_key(model_spec(config))
    edits_key = stable_hash(data_source_key(config.edits.dataset), config.edits.model_dump(mode="json"))
    editor: dict[str, Any] = {
        "name": config.editor.name,
        "seed": config.editor.seed,
        "hparams": resolved.editor_hparams,
    }
    if resolved.editor_hparams.get("train_data"):  # a trained editor (MEND): its records by content, not by path
        editor["train_data"] = data_source_key(resolved.editor_hparams["train_data"])
    patch_key = stable_hash("patch", PATCH_FORMAT, model_key, edits_key, editor)
    spec = resolved.finetune_spec
    layers = None if spec.layers == "all" else resolved.edit_layers
    ft = {
        "spec": spec.to_dict(),
        "corpus": data_source_key(config.finetune.corpus, "corpus"),
        "max_examples": config.finetune.max_examples,
        "corpus_seed": config.finetune.corpus_seed,
        "edit_layers": layers,
    }
    if config.finetune.fact_statements is not None:  # the statements come from the edit requests
        ft["facts"] = {
            "side": config.finetune.fact_statements,
            "fraction": config.finetune.fact_fraction,
            "edits": edits_key,
        }
    control_key = data_source_key("builtin-control") if config.evaluation.control else None
    keys = {
        "model": model_key,
        "edits": edits_key,
        "patch": patch_key,
        "ft_base": stable_hash("ft", RESULT_FORMAT, model_key, ft),
    }
    strategy = config.finetune.strategy
    if STRATEGIES[strategy].reedits:  # Med_ft is a patch of Mft made by the same editor
        keys["ft_edited"] = stable_hash("reedit", PATCH_FORMAT, keys["ft_base"], edits_key, editor)
    else:
        # A strategy's identity joins the key only when there is one, so plain runs keep their keys.
        used: list[dict[str, Any]] = []
        if strategy != "none":
            used.append({"name": strategy, "edits": edits_key})
            if STRATEGIES[strategy].version:
                used[0]["format"] = STRATEGIES[strategy].version
            if strategy == "replay":
                used[0]["fraction"] = config.finetune.replay_fraction
        curve = curve_identity(config, control_key)
        keys["ft_edited"] = stable_hash("ft", RESULT_FORMAT, patch_key, ft, curve, *used)
    evaluation = config.evaluation.model_dump(mode="json", exclude={"curve_every"})
    group_identity = {"M": keys["model"], "Med": keys["patch"], "Mft": keys["ft_base"], "Med_ft": keys["ft_edited"]}
    for group, identity in group_identity.items():
        keys[f"eval_{group}"] = stable_hash("eval", EVAL_FORMAT, identity, edits_key, control_key, evaluation)
    keys["activations"] = stable_hash("act", ACTIVATIONS_FORMAT, *group_identity.values(), edits_key, evaluation)
    return keys


def curve_identity(config: ExperimentConfig, control_key: str | None) -> dict[str, Any] | None:
    """What the decay curve of Med's fine-tuning measures (None without one): part of that run's identity."""
    evaluation = config.evaluation
    if evaluation.curve_every is None:
        return None
    control = {"source": control_key, "n": evaluation.control_n} if control_key else None
    return {"format": CURVE_FORMAT, "every": evaluation.curve_every, "control": control, "batch": evaluation.batch_size}


def patch_chain_key(config: ExperimentConfig) -> str:
    """Configurations with equal values here share one WeightPatch (same model, edits and editor as written):
    the unit an executor runs on one worker. A grouping only; the store keys come from `stage_keys`."""
    return stable_hash(
        config.model.model_dump(mode="json"),
        config.edits.model_dump(mode="json"),
        config.editor.model_dump(mode="json"),
    )


def written_keys(config: ExperimentConfig) -> dict[str, str]:
    """Stand-ins for `stage_keys` when the model's shape cannot be read (a hub id not in the local cache): one
    distinct value per distinct stage of the config as written, to count a grid's stages. Never store keys."""
    model = config.model.model_dump(mode="json")
    patch = stable_hash(
        "written-patch", model, config.edits.model_dump(mode="json"), config.editor.model_dump(mode="json")
    )
    ft = config.finetune.model_dump(mode="json")
    base_ft = stable_hash("written-ft", model, ft, None if config.finetune.layers == "all" else patch)
    keys = {"patch": patch, "ft_base": base_ft, "ft_edited": stable_hash("written-ft", patch, ft)}
    evaluation = config.evaluation.model_dump(mode="json")
    for group, identity in {"M": stable_hash(model), "Med": patch, "Mft": base_ft, "Med_ft": keys["ft_edited"]}.items():
        keys[f"eval_{group}"] = stable_hash("written-eval", identity, config.edits.model_dump(mode="json"), evaluation)
    keys["activations"] = stable_hash("written-act", keys["ft_edited"], keys["ft_base"], evaluation)
    return keys
