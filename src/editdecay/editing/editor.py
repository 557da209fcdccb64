"""The shared driver of locate-then-edit editors (MEMIT, AlphaEdit): statistics, context templates,
target values, then per layer (ascending) keys on the current model, residual spread and a closed-form
update (docs/algorithms.md §1-2). Subclasses supply the update rule.

The caller's model is edited in place while `edit` runs and restored bit for bit afterwards (unless
`in_place=True`), and on any exception, so the weights are never left half-edited.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from editdecay.data import EditRequest
from editdecay.editing.configured import ConfiguredEditor, checked_requests, restored_on_exit
from editdecay.editing.context_templates import sample_context_templates
from editdecay.editing.edit_progress import SAVE_EVERY_S, BatchProgress, EditProgress, progress_key
from editdecay.editing.hparams import MemitHyperParams, fallback_hparams, preset_for_model, preset_values
from editdecay.editing.outnorm import post_mlp_norm, preimage_change
from editdecay.editing.patch import WeightPatch, add_delta, delta_dtype
from editdecay.editing.protocol import EditContext
from editdecay.editing.stats import LayerStats, StatsStore
from editdecay.editing.subject_keys import BlockInputs, compute_keys
from editdecay.editing.target_store import TargetKey, TargetStore
from editdecay.editing.target_values import TargetResult, compute_targets
from editdecay.models import ModelShape, arch_for, default_cache_dir, model_fingerprint

log = logging.getLogger(__name__)

HP = TypeVar("HP", bound=MemitHyperParams)


@dataclass
class EditRun:
    """Everything one `edit` call resolved and measured; becomes the patch manifest."""

    hparams: MemitHyperParams
    fingerprint: str
    contexts: list[str] = field(default_factory=list)
    stats: dict[int, LayerStats] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    batches: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    target_store: TargetStore | None = None

    def time(self, phase: str, seconds: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds


def layer_moments(hp: MemitHyperParams, run: EditRun) -> dict[int, torch.Tensor | None]:
    """Each edit layer's second moment C, or None when mom2_adjustment is off (C = I, as in the reference)."""
    return {layer: run.stats[layer].moment if layer in run.stats else None for layer in hp.layers}


def moment_or_identity(moment: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
    """C on the keys' device, or the identity of the keys' width when there is no statistic."""
    if moment is None:
        return torch.eye(keys.shape[0], dtype=torch.float64, device=keys.device)
    return moment.to(keys.device)


class LocateEditor(ConfiguredEditor[HP]):
    """Base of MEMIT-style editors."""

    hparams_class: ClassVar[type[MemitHyperParams]]

    @classmethod
    def preset_settings(cls, name: str) -> dict[str, Any]:
        return preset_values(name)

    @classmethod
    def preset_name_for(cls, shape: ModelShape) -> str | None:
        return preset_for_model(shape)

    @classmethod
    def fallback_settings(cls, shape: ModelShape) -> dict[str, Any]:
        return fallback_hparams(shape)

    def resolved_hparams(self, model: nn.Module | ModelShape, device: str | None = None) -> HP:
        """Defaults < preset (named, or recognised from the model) < overrides; checked against the model, with
        `v_dtype: auto` resolved for `device` (default: the model's). A ModelShape resolves them without weights."""
        shape = ModelShape.of(model)
        hp = self.merged_hparams(shape).for_model(shape)
        model_dtype = None if isinstance(model, ModelShape) else next(model.parameters()).dtype
        if device is None:
            if isinstance(model, ModelShape):
                raise ValueError("resolved_hparams of a ModelShape needs the device the edit will run on.")
            device = str(next(model.parameters()).device)
        return hp.with_resolved_dtype(self.dtypes, device, shape, model_dtype)

    def edit(
        self,
        model: nn.Module,
        tokenizer,
        requests: Sequence[EditRequest],
        context: EditContext | None = None,
        *,
        in_place: bool = False,
    ) -> WeightPatch:
        """Edit `requests` into `model` and return the WeightPatch (the model is restored unless in_place)."""
        patch, _ = self._edit(model, tokenizer, requests, context or EditContext(), in_place=in_place, state=None)
        return patch

    def _edit(
        self,
        model: nn.Module,
        tokenizer,
        requests: Sequence[EditRequest],
        context: EditContext,
        *,
        in_place: bool,
        state: Any,
    ) -> tuple[WeightPatch, Any]:
        requests = checked_requests(requests)
        hp = self.resolved_hparams(model)
        was_training = model.training
        model.eval()  # dropout would make statistics, contexts and target values random
        stats = context.stats or StatsStore(default_cache_dir() / "stats")
        try:
            return self._run(
                model,
                tokenizer,
                requests,
                hp,
                stats,
                context.seed,
                context.fingerprint,
                in_place,
                state,
                context.targets,
                context.progress,
            )
        finally:
            model.train(was_training)

    def _run(
        self,
        model: nn.Module,
        tokenizer,
        requests: list[EditRequest],
        hp: HP,
        stats: StatsStore,
        seed: int,
        fingerprint: str | None,
        in_place: bool,
        state: Any,
        targets: TargetStore | None,
        progress_root: Path | None = None,
    ) -> tuple[WeightPatch, Any]:
        run = EditRun(hp, fingerprint or model_fingerprint(model), target_store=targets)
        started = time.perf_counter()
        run.stats = self._statistics(model, tokenizer, hp, stats, run.fingerprint)
        run.time("statistics", time.perf_counter() - started)
        tick = time.perf_counter()
        run.contexts = sample_context_templates(
            model, tokenizer, count=hp.context_template_count, length=hp.context_template_tokens, seed=seed
        )
        run.time("context_templates", time.perf_counter() - tick)
        tick = time.perf_counter()
        prepared = self._prepare(hp, run)
        run.time("prepare", time.perf_counter() - tick)
        continued = state is not None  # a sequence continued from the caller's state
        state = self._initial_state(hp, state)

        arch = arch_for(model)
        names = {layer: arch.mlp_out_weight_name(layer) for layer in hp.layers}
        params = {layer: model.get_parameter(name) for layer, name in names.items()}
        totals = {
            layer: torch.zeros(p.shape, dtype=delta_dtype(p.dtype), device=p.device) for layer, p in params.items()
        }
        mapped_keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in hp.layers}
        size = hp.batch_size or len(requests)
        starts = list(range(0, len(requests), size))
        progress = None
        # A continued sequence is not saved: its key would have to hold the caller's state too.
        if progress_root is not None and len(starts) > 1 and not continued:
            key = progress_key(type(self).__name__, run.fingerprint, requests, hp.to_dict(), seed)
            progress = EditProgress(progress_root, key)
        with restored_on_exit(params, keep=in_place) as originals:
            done, last_save = 0, time.monotonic()
            if progress is not None and (saved := progress.load()) is not None:
                done, state = saved.done, self._load_state(progress.path, hp)
                with torch.no_grad():
                    for layer, weight in saved.weights.items():
                        params[layer].copy_(weight)
                totals = {layer: total.to(totals[layer].device) for layer, total in saved.totals.items()}
                mapped_keys = {layer: [keys] for layer, keys in saved.keys.items()}
                run.batches, run.timings = saved.batches, saved.timings
                log.info("Resuming the edit at batch %d of %d (%s)", done + 1, len(starts), progress.path)
            for index, first in enumerate(starts[done:], start=done):
                batch = requests[first : first + size]
                state = self._edit_batch(
                    model,
                    tokenizer,
                    batch,
                    hp,
                    run,
                    prepared,
                    state,
                    params,
                    originals,
                    totals,
                    arch.mlp_out_transposed,
                    mapped_keys,
                )
                due = time.monotonic() - last_save >= SAVE_EVERY_S
                if progress is not None and index + 1 < len(starts) and due:
                    snapshot = BatchProgress(
                        index + 1,
                        {layer: p.detach() for layer, p in params.items()},
                        totals,
                        {layer: torch.cat(found) for layer, found in mapped_keys.items()},
                        run.batches,
                        run.timings,
                    )
                    progress.save(snapshot, partial(self._save_state, state))
                    last_save = time.monotonic()
        if progress is not None:
            progress.clear()
        run.time("total", time.perf_counter() - started)
        patch = WeightPatch(
            {names[layer]: totals[layer] for layer in hp.layers},
            self._manifest(run, requests, names, totals, seed),
            keys={layer: torch.cat(found) for layer, found in mapped_keys.items()},
            requests=requests,
        )
        return patch, state

    def _edit_batch(
        self,
        model: nn.Module,
        tokenizer,
        batch: list[EditRequest],
        hp: HP,
        run: EditRun,
        prepared: Any,
        state: Any,
        params: dict[int, nn.Parameter],
        originals: dict[int, torch.Tensor],
        totals: dict[int, torch.Tensor],
        transposed: bool,
        mapped_keys: dict[int, list[torch.Tensor]],
    ) -> Any:
        z_layer = hp.layers[-1]
        settings = hp.target_settings()
        tick = time.perf_counter()

        chunk_cache = None
        # Only the first batch sees the model whose fingerprint (run.fingerprint) keys the cache; its chunks of
        # z_batch_size requests are stored one by one, so a killed run resumes at the first unsaved chunk.
        if (store := run.target_store) is not None and not run.batches:

            def chunk_cache(chunk: Sequence[EditRequest], compute: Callable[[], TargetResult]) -> TargetResult:
                return store.get(TargetKey.of(run.fingerprint, chunk, run.contexts, settings, hp.z_batch_size), compute)

        targets = compute_targets(
            model, tokenizer, batch, run.contexts, settings, batch_size=hp.z_batch_size, chunk_cache=chunk_cache
        )
        run.time("targets", time.perf_counter() - tick)
        record: dict[str, Any] = {
            "requests": len(batch),
            "target_steps_mean": sum(targets.steps) / len(batch),
            "target_nll_mean": sum(targets.final_nll) / len(batch),
            "layers": {},
        }
        device = next(model.parameters()).device
        # Layer l's keys read here are already those of the edited model: only the layers below it have
        # changed, and its own update and those above cannot reach them.
        edited_keys: dict[int, torch.Tensor] = {}
        inputs: BlockInputs | None = None
        for i, layer in enumerate(hp.layers):
            tick = time.perf_counter()
            norm = post_mlp_norm(model, layer)
            # Only the previous edit layer changed since the last pass, so this pass starts at its input.
            current = compute_keys(
                model,
                tokenizer,
                batch,
                run.contexts,
                [layer],
                z_layer=z_layer,
                values_at=[layer] if norm is not None else [],
                resume=inputs,
                keep_inputs_of=layer if layer > 0 else None,
            )
            inputs, edited_keys[layer] = current.inputs, current.keys[layer]
            run.time("keys", time.perf_counter() - tick)
            tick = time.perf_counter()
            assert current.z_current is not None
            # Spread what is still missing at L_z evenly over this and the remaining layers (§1.5).
            residual = (targets.z - current.z_current).T / (len(hp.layers) - i)
            if norm is not None:  # the output projection's output is normed before the residual add
                residual = preimage_change(norm, current.values[layer], residual)
            keys = current.keys[layer].T
            mapped_keys[layer].append(current.keys[layer].detach().float().cpu())
            delta = self._layer_delta(layer, residual.to(device), keys.to(device), hp, prepared, state)
            oriented = delta.T if transposed else delta
            with torch.no_grad():
                totals[layer] += oriented.to(totals[layer].dtype)
                params[layer].copy_(add_delta(originals[layer], totals[layer]))
            run.time("solve", time.perf_counter() - tick)
            record["layers"][layer] = {
                "update_norm": float(delta.norm()),
                "residual_norm_mean": float(residual.norm(dim=0).mean()),
            }
        tick = time.perf_counter()
        reached = compute_keys(model, tokenizer, batch, run.contexts, [], z_layer=z_layer).z_current
        assert reached is not None
        wanted = (targets.z - targets.z_init).norm(dim=1)
        missing = (targets.z - reached).norm(dim=1)
        # How much of the wanted change at L_z the updates carried (1: all of it; ~0: the solve under-edits).
        record["carried_fraction_mean"] = float((1 - missing / wanted.clamp_min(1e-12)).mean())
        run.time("keys", time.perf_counter() - tick)
        tick = time.perf_counter()
        state = self._after_batch(edited_keys, len(batch), state)
        run.time("after_batch", time.perf_counter() - tick)
        run.batches.append(record)
        return state

    def _statistics(
        self, model: nn.Module, tokenizer, hp: HP, store: StatsStore, fingerprint: str
    ) -> dict[int, LayerStats]:
        if not hp.mom2_adjustment:
            return {}
        return store.get_layer_stats(
            model,
            tokenizer,
            hp.layers,
            corpus=hp.mom2_dataset,
            n_tokens=hp.mom2_n_tokens,
            dtype=hp.mom2_dtype,
            fingerprint=fingerprint,
            max_length=hp.mom2_max_length,
        )

    def _manifest(
        self,
        run: EditRun,
        requests: list[EditRequest],
        names: dict[int, str],
        totals: dict[int, torch.Tensor],
        seed: int,
    ) -> dict[str, Any]:
        hp = run.hparams
        return {
            **self.base_manifest(hp, requests, [names[layer] for layer in hp.layers], run.fingerprint),
            "protocol": {
                "n_requests": len(requests),
                "batch_size": hp.batch_size or len(requests),
                "sequential": hp.batch_size is not None and hp.batch_size < len(requests),
                "n_batches": len(run.batches),
                "seed": seed,
                "model_restored_between_batches": False,
            },
            "context_templates": run.contexts,
            "statistics": {str(layer): s.summary() for layer, s in run.stats.items()},
            "update_norms": {str(layer): float(totals[layer].norm()) for layer in hp.layers},
            "batches": run.batches,
            "timings": {k: round(v, 3) for k, v in run.timings.items()},
            "dtype_probes": [probe.to_dict() for probe in self.dtypes.results.values()],
            **run.extra,
        }

    @abstractmethod
    def _prepare(self, hp: HP, run: EditRun) -> Any:
        """Per-layer data the update rule needs (computed once per `edit`)."""

    @abstractmethod
    def _layer_delta(
        self, layer: int, residual: torch.Tensor, keys: torch.Tensor, hp: HP, prepared: Any, state: Any
    ) -> torch.Tensor:
        """The (d, m) update of one layer from residuals R (d, n) and keys K (m, n)."""

    def _save_state(self, state: Any, directory: Path) -> None:
        """Save the sequential state `_after_batch` carries (none here: MEMIT's batches are independent)."""

    def _load_state(self, directory: Path, hp: HP) -> Any:
        return None

    def _initial_state(self, hp: HP, state: Any) -> Any:
        return state

    def _after_batch(self, edited_keys: dict[int, torch.Tensor], n_requests: int, state: Any) -> Any:
        """Update the sequential state from this batch's keys (layer -> (n, m)) on the edited model."""
        return state
