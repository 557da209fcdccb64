"""`finetune`: one resumable fine-tuning run from a model and a corpus to a result directory."""

from __future__ import annotations

import copy
import datetime
import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from editdecay.data.instruction_corpus import InstructionExample
from editdecay.finetuning.collate import examples_fingerprint, split_validation, tokenize_example
from editdecay.finetuning.hooks import TrainingHooks
from editdecay.finetuning.loop import Checkpoint, CurveProbe, corpus_loss, train
from editdecay.finetuning.methods import FINETUNE_METHODS
from editdecay.finetuning.result import CURVE, MANIFEST, RESULT_FORMAT, FinetuneResult
from editdecay.finetuning.spec import FinetuneSpec
from editdecay.finetuning.trainable_modules import resolve_layers, resolve_trainable_modules
from editdecay.models import DtypeResolver, causal_lm, model_fingerprint, pad_id_of
from editdecay.storage import atomic_directory, atomic_write_json


def checkpoint_dir(out_dir: Path) -> Path:
    """Where a run keeps its resumable state: next to `out_dir`, removed once the result is written."""
    return out_dir.with_name(out_dir.name + ".checkpoint")


def finetune(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[InstructionExample],
    spec: FinetuneSpec,
    *,
    out_dir: str | Path,
    edited_layers: Sequence[int] | None = None,
    base_fingerprint: str | None = None,
    progress: bool = True,
    corpus_id: str | None = None,
    checkpoint_every_s: float = 300.0,
    dtypes: DtypeResolver | None = None,
    probe: CurveProbe | None = None,
    probe_key: str | None = None,
    hooks: TrainingHooks | None = None,
) -> FinetuneResult:
    """Fine-tune a deep copy of `model` (the caller's weights are never touched) and save the result.

    `out_dir` appears only when the run is complete (staged, then renamed). Training state is saved at
    most every `checkpoint_every_s` seconds to `<out_dir>.checkpoint`; re-running the same call resumes
    from it (a checkpoint of a different run is ignored). If `out_dir` already holds this exact run
    (same spec, examples and base weights), it is returned without training. `base_fingerprint` is the
    identity recorded for the base (e.g. model plus WeightPatch); it defaults to the weights' fingerprint.
    `compute_dtype: auto` is resolved first (with `dtypes`, or a fresh probe): the manifest records the result.
    With `probe`, its measurements during training are saved as `curve.parquet` (`FinetuneResult.curve`);
    `probe_key` names what it measures (part of the run's identity, so a result without that curve is not reused).
    `hooks` change how the model is prepared, constrained after each step and saved (finetuning/hooks.py); their
    `identity()` is part of the run's identity.
    """
    out_dir = Path(out_dir)
    dtypes = dtypes or DtypeResolver()
    spec = spec.with_resolved_dtype(dtypes, model)
    if not examples:
        raise ValueError("finetune needs at least one example.")
    weights_fp = model_fingerprint(model)
    run_key: dict[str, Any] = {
        "spec_id": spec.spec_id(),
        "examples": examples_fingerprint(examples),
        "model_fingerprint": weights_fp,
        "edited_layers": sorted(set(edited_layers)) if edited_layers else None,
    }
    if probe is not None:
        if probe_key is None:
            raise ValueError("finetune with a probe needs probe_key: what the probe measures, for the run's identity.")
        run_key["curve"] = {"probe": probe_key, "every": probe.every}
    hooks = hooks or TrainingHooks()
    if hooks.identity() is not None:
        run_key["hooks"] = hooks.identity()
    done = _existing_result(out_dir, run_key)
    if done is not None:
        if progress:
            tqdm.write(f"{out_dir} already holds this fine-tuning run; reusing it.")
        return done

    modules = resolve_trainable_modules(model, spec, edited_layers, verbose=progress)
    hooks.check(spec, modules)
    train_examples, val_examples = split_validation(examples, spec.val_fraction, spec.seed)
    tokenized = [tokenize_example(tokenizer, ex, spec.cutoff_len, spec.train_on_inputs) for ex in train_examples]
    no_targets = sum(ex.n_targets == 0 for ex in tokenized)
    if no_targets == len(tokenized):
        raise ValueError(
            f"No example keeps a token to train on within cutoff_len={spec.cutoff_len} (without "
            "train_on_inputs only response tokens count); raise cutoff_len."
        )
    if no_targets and progress:
        tqdm.write(
            f"Warning: {no_targets} of {len(tokenized)} examples keep no response token within "
            f"cutoff_len={spec.cutoff_len} and teach nothing."
        )

    method = FINETUNE_METHODS[spec.method]
    work = copy.deepcopy(model).float()
    work.requires_grad_(False)
    _use_fast_training_attention(work, spec)
    trained = hooks.prepare(method, work, modules, spec)
    expected = sum(method.trainable_count(model.get_submodule(name), spec) for name in modules)
    actual = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    if actual != expected:
        raise RuntimeError(
            f"{spec.method} made {actual:,} parameters trainable, expected {expected:,} for modules "
            f"{modules}: the method matched other modules too."
        )

    checkpoint = Checkpoint(checkpoint_dir(out_dir), run_key)
    state = train(
        trained,
        tokenized,
        spec,
        pad_id=pad_id_of(tokenizer),
        checkpoint=checkpoint,
        checkpoint_every_s=checkpoint_every_s,
        progress=progress,
        desc=f"finetune {spec.method}",
        probe=probe,
        after_step=hooks.after_step,
    )
    val_loss = corpus_loss(trained, tokenizer, val_examples, spec) if val_examples else None

    manifest: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "method": spec.method,
        "spec": spec.to_dict(),
        "spec_id": spec.spec_id(),
        "run_key": run_key,
        "corpus_id": corpus_id,
        "examples_fingerprint": run_key["examples"],
        "n_examples": len(examples),
        "n_train": len(train_examples),
        "n_val": len(val_examples),
        "base_fingerprint": base_fingerprint or weights_fp,
        "model_fingerprint": weights_fp,
        "base_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "edited_layers": run_key["edited_layers"],
        "layers": resolve_layers(model, spec, edited_layers),
        "modules": modules,
        "trainable_params": actual,
        "steps": state.step,
        "tokens": state.tokens,
        "train_losses": state.losses,
        "val_loss": val_loss,
        "train_seconds": state.elapsed_s,
        "curve_every": probe.every if probe else None,
        "hooks": hooks.identity(),
        "tokens_per_s": state.tokens / max(state.elapsed_s, 1e-9),
        "dtype_probes": [probe.to_dict() for probe in dtypes.results.values()],
        "versions": {pkg: _version(pkg) for pkg in ("editdecay", "torch", "transformers", "peft")},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_directory(out_dir) as staging:
        hooks.save(method, trained, model, staging)
        if probe is not None:
            pd.DataFrame.from_records(state.curve).to_parquet(staging / CURVE, index=False)
        atomic_write_json(staging / MANIFEST, manifest)
    checkpoint.clear()
    return FinetuneResult.load(out_dir)


def _use_fast_training_attention(work: nn.Module, spec: FinetuneSpec) -> None:
    """Eager attention on CPU: a SmolLM2 LoRA step at ~100 tokens took 1.2x less time than with SDPA, whose
    CPU backward is slow. Its memory grows with the square of the length, so only up to 512 tokens."""
    if next(work.parameters()).device.type == "cpu" and spec.cutoff_len <= 512:
        causal_lm(work).set_attn_implementation("eager")


def _existing_result(out_dir: Path, run_key: dict[str, Any]) -> FinetuneResult | None:
    if not out_dir.exists():
        return None
    if not (out_dir / MANIFEST).is_file():
        raise FileExistsError(f"{out_dir} exists but holds no fine-tuning result; choose another output directory.")
    existing = FinetuneResult.load(out_dir)
    if existing.manifest.get("run_key") != run_key:
        differs = sorted(k for k in run_key if existing.manifest.get("run_key", {}).get(k) != run_key[k])
        raise FileExistsError(
            f"{out_dir} holds a different fine-tuning run ({existing.method}, spec {existing.manifest.get('spec_id')}; "
            f"differs in {', '.join(differs)}); choose another output directory or delete it."
        )
    return existing


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
