"""Editor hyperparameters: dataclasses whose field names match MEMIT JSON / EasyEdit YAML hparams files.

Resolution order for a model: field defaults < preset (named, or recognised from the model's shape) <
user overrides (a dict or an hparams file). Presets for GPT-2 XL, GPT-J, Llama-2-7B and Llama-3-8B carry
the published values (docs/algorithms.md §1); those for SmolLM2-135M and Gemma-3-270M were chosen by measurement
(docs/presets.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from torch import nn

from editdecay.editing.target_values import TargetSettings
from editdecay.models import AUTO, DtypeResolver, ModelShape, check_layers, default_edit_layers
from editdecay.models.arch import known_model, known_model_named

log = logging.getLogger(__name__)

# Keys of published hparams files that name modules or harness settings: we resolve modules from the
# model's ArchSpec, so these are recorded and otherwise ignored.
_HARNESS_KEYS = frozenset(
    {
        "alg_name",
        "model_name",
        "device",
        "stats_dir",
        "model_parallel",
        "max_length",
        "P_loc",
        "rewrite_module_tmp",
        "layer_module_tmp",
        "mlp_module_tmp",
        "attn_module_tmp",
        "ln_f_module",
        "lm_head_module",
        "fp16",
        "bf16",
        "specific_subject",
    }
)

HP = TypeVar("HP", bound="EditorHyperParams")
MHP = TypeVar("MHP", bound="MemitHyperParams")


@dataclass
class EditorHyperParams:
    """What every editor's hyperparameter class shares: read from a dict or an hparams file (numbers written as
    strings coerced to the field's type, harness keys of published files recorded in `ignored`), written back by
    `to_dict`, validated by `check` with messages that name the field."""

    layers: list[int] = field(default_factory=list)  # empty: resolved from the model
    ignored: dict[str, Any] = field(default_factory=dict)  # keys of a loaded file that we do not use

    @classmethod
    def from_dict(cls: type[HP], data: dict[str, Any], *, source: str = "hparams") -> HP:
        known = {f.name for f in fields(cls)} - {"ignored"}
        unknown = {k: v for k, v in data.items() if k not in known and k != "ignored"}
        if unknown:
            harness = sorted(k for k in unknown if k in _HARNESS_KEYS)
            other = sorted(k for k in unknown if k not in _HARNESS_KEYS)
            if harness:
                log.info("%s: ignoring %s (modules come from the model's ArchSpec)", source, ", ".join(harness))
            if other:
                log.warning("%s: unknown keys %s ignored (known keys: %s)", source, other, sorted(known))
        values = {k: _coerce(cls, k, v, source) for k, v in data.items() if k in known}
        if "layers" in values:
            values["layers"] = _int_list(values["layers"], source)
        hp = cls(**values, ignored={**data.get("ignored", {}), **unknown})
        hp.check()
        return hp

    @classmethod
    def unknown_keys(cls, data: dict[str, Any]) -> list[str]:
        """Keys of `data` that `from_dict` would only warn about: neither fields nor the harness keys of
        published hparams files. Strict callers (experiment configs, `edit --set`) treat them as errors."""
        known = {f.name for f in fields(cls)} - {"ignored"}
        return sorted(k for k in data if k not in known and k not in _HARNESS_KEYS)

    @classmethod
    def from_file(cls: type[HP], path: str | Path) -> HP:
        """Load a MEMIT JSON or EasyEdit YAML hparams file (complete or partial)."""
        return cls.from_dict(read_hparams_file(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: HP, **changes: Any) -> HP:
        merged = {**self.to_dict(), **changes}
        return type(self).from_dict(merged)

    def check(self) -> None:
        """Model-independent validation (subclasses add theirs)."""
        if self.layers and sorted(set(self.layers)) != list(self.layers):
            raise ValueError(f"Invalid {type(self).__name__}: layers={self.layers}: must be strictly increasing")


@dataclass
class MemitHyperParams(EditorHyperParams):
    """MEMIT hyperparameters (docs/algorithms.md §1). Extensions beyond the published keys are marked."""

    layer_selection: str = "all"
    fact_token: str = "subject_last"
    v_num_grad_steps: int = 25
    v_lr: float = 0.5
    v_loss_layer: int | None = None  # the last block; the loss is always taken on the model's logits
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    mom2_adjustment: bool = True  # False: C = I (no second-moment statistic)
    mom2_update_weight: float = 15000.0
    mom2_dataset: str = "model-sampled"  # a corpus spec for `data.stats_text.open_corpus`
    mom2_n_samples: int | None = None  # reference meaning: number of documents; recorded, see mom2_n_tokens
    mom2_dtype: str = "float32"
    # --- editdecay extensions ---
    mom2_n_tokens: int = 20_000  # statistic sample size in tokens (the knob that sets its cost)
    mom2_max_length: int = 128  # documents are cut into pieces of at most this many tokens
    batch_size: int | None = None  # edits per sequential batch; None: all requests in one batch
    context_template_count: int = 5  # prefixed contexts besides the bare "{}"
    context_template_tokens: int = 10  # length of each sampled prefix
    v_early_stop_loss: float = 0.05
    z_batch_size: int = 16  # requests optimised together (memory/speed knob; does not change the result)
    # dtype of the target optimisation's steps: "auto" (bfloat16 where a probe measures it faster, else
    # float32), an explicit dtype, or None (the model's own)
    v_dtype: str | None = AUTO

    @property
    def sequential(self) -> bool:
        return self.batch_size is not None

    def target_settings(self) -> TargetSettings:
        """The target optimisation's settings (z at the last edit layer; `layers` must be resolved)."""
        if not self.layers:
            raise ValueError("The edit layers are not resolved yet (use the editor's resolved_hparams).")
        return TargetSettings(
            z_layer=self.layers[-1],
            steps=self.v_num_grad_steps,
            lr=self.v_lr,
            weight_decay=self.v_weight_decay,
            clamp_norm_factor=self.clamp_norm_factor,
            kl_factor=self.kl_factor,
            early_stop_loss=self.v_early_stop_loss,
            compute_dtype=self.v_dtype,
        )

    def check(self) -> None:
        """Model-independent validation, with messages that name the field."""
        problems = []
        if self.layer_selection != "all":
            problems.append(f"layer_selection={self.layer_selection!r}: only 'all' is implemented")
        if self.fact_token != "subject_last":
            problems.append(f"fact_token={self.fact_token!r}: only 'subject_last' is implemented")
        if self.layers and sorted(set(self.layers)) != list(self.layers):
            problems.append(f"layers={self.layers}: must be strictly increasing")
        for name in ("v_num_grad_steps", "mom2_n_tokens", "mom2_max_length", "z_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("v_lr", "clamp_norm_factor", "mom2_update_weight"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("v_weight_decay", "kl_factor"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 or null, got {self.batch_size}")
        if self.v_dtype not in (None, AUTO, "float32", "float64", "bfloat16", "float16"):
            problems.append(f"v_dtype={self.v_dtype!r}: use auto, null, float32, float64, bfloat16 or float16")
        if self.mom2_dtype not in ("float32", "float64"):
            problems.append(f"mom2_dtype={self.mom2_dtype!r}: choose float32 or float64")
        if problems:
            raise ValueError(f"Invalid {type(self).__name__}: " + "; ".join(problems))

    def for_model(self: MHP, model: nn.Module | ModelShape) -> MHP:
        """Fill the layers from the model when unset and check everything that depends on the model."""
        shape = ModelShape.of(model)
        hp = self if self.layers else self.replace(layers=list(default_edit_layers(shape)))
        check_layers(shape, hp.layers)
        last = shape.num_layers - 1
        if hp.v_loss_layer is not None and hp.v_loss_layer != last:
            raise ValueError(
                f"v_loss_layer={hp.v_loss_layer}: the target loss is computed on the model's output, i.e. "
                f"after its last block ({last}); set v_loss_layer to {last} or leave it out."
            )
        return hp

    def with_resolved_dtype(
        self: MHP, dtypes: DtypeResolver, device: str, shape: ModelShape, model_dtype: torch.dtype | None = None
    ) -> MHP:
        """`v_dtype` made concrete: `auto` becomes what the probe measured faster on `device` (a float64 model
        keeps float64: that precision was chosen on purpose, not for speed)."""
        if self.v_dtype == AUTO and model_dtype == torch.float64:
            return self.replace(v_dtype=None)
        if self.v_dtype not in (AUTO, "bfloat16"):
            return self
        chosen = dtypes.resolve(
            self.v_dtype, device=device, d_in=shape.hidden_size, d_out=shape.intermediate_size, purpose="target steps"
        )
        return self if chosen == self.v_dtype else self.replace(v_dtype=chosen)


@dataclass
class AlphaEditHyperParams(MemitHyperParams):
    """AlphaEdit hyperparameters (docs/algorithms.md §2): MEMIT's plus the null-space projector and ridge."""

    nullspace_threshold: float = 2e-2  # keep eigen-directions of C with eigenvalue below this (absolute)
    # --- editdecay extensions ---
    # Relative rule: keep the smallest-eigenvalue directions that together hold at most this fraction of
    # trace(C). When set it replaces the absolute threshold.
    nullspace_energy: float | None = None
    L2: float = 10.0  # the published key name
    batch_size: int | None = 100

    def check(self) -> None:
        super().check()
        if self.nullspace_threshold < 0:
            raise ValueError(f"nullspace_threshold must be >= 0, got {self.nullspace_threshold}")
        if self.nullspace_energy is not None and not 0 <= self.nullspace_energy <= 1:
            raise ValueError(f"nullspace_energy must be in [0, 1] or null, got {self.nullspace_energy}")
        if self.L2 < 0:
            raise ValueError(f"L2 must be >= 0, got {self.L2}")


def read_hparams_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such hparams file: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of hyperparameters, got {type(data).__name__}")
    return data


def _coerce(cls: type, name: str, value: Any, source: str) -> Any:
    """Numbers written as strings (PyYAML reads `5e-1` as a string) become numbers of the field's type."""
    hint = str(typing.get_type_hints(cls)[name])
    is_float, is_int = "float" in hint, "int" in hint and "list" not in hint
    if value is None or isinstance(value, bool) or not (is_float or is_int):
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{source}: {name!r} must be a number, got {value!r}") from None
    if is_float:
        return float(value) if isinstance(value, int) else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _int_list(value: Any, source: str) -> list[int]:
    items = [value] if isinstance(value, int) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{source}: 'layers' must be a list of block indices, got {value!r}")
    return list(items)


# Published values (docs/algorithms.md §1): n_steps / v_lr / weight decay / clamp / kl / lambda.
_PUBLISHED: dict[str, dict[str, Any]] = {
    "gpt2-xl": {
        "v_num_grad_steps": 20,
        "v_lr": 0.5,
        "v_weight_decay": 0.5,
        "clamp_norm_factor": 0.75,
        "kl_factor": 0.0625,
        "mom2_update_weight": 20000.0,
    },
    "gpt-j-6b": {
        "v_num_grad_steps": 25,
        "v_lr": 0.5,
        "v_weight_decay": 0.5,
        "clamp_norm_factor": 0.75,
        "kl_factor": 0.0625,
        "mom2_update_weight": 15000.0,
    },
    # One public Llama-2 config uses mom2_update_weight = 1; 15000 is the standard setting.
    "llama-2-7b": {
        "v_num_grad_steps": 25,
        "v_lr": 0.5,
        "v_weight_decay": 1e-3,
        "clamp_norm_factor": 4.0,
        "kl_factor": 0.0625,
        "mom2_update_weight": 15000.0,
    },
    "llama-3-8b": {
        "v_num_grad_steps": 25,
        "v_lr": 0.1,
        "v_weight_decay": 0.5,
        "clamp_norm_factor": 0.75,
        "kl_factor": 0.0625,
        "mom2_update_weight": 15000.0,
    },
}
for _published in _PUBLISHED.values():
    # Published statistics: 100,000 Wikipedia documents in float32.
    _published.update(
        {
            "mom2_dataset": "wikipedia",
            "mom2_n_samples": 100_000,
            "mom2_dtype": "float32",
            "mom2_n_tokens": 10_000_000,
            "mom2_max_length": 1024,
        }
    )

# Built-in models: chosen by measurement (bench/edit_speed.py); the measurements are in docs/presets.md.
_MEASURED: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "v_num_grad_steps": 12,
        "v_lr": 1.0,
        "v_weight_decay": 1e-3,
        "clamp_norm_factor": 4.0,
        "kl_factor": 0.0625,
        "mom2_update_weight": 1500.0,
        "mom2_dataset": "model-sampled",
        "mom2_n_tokens": 10_000,
    },
    "gemma3-270m": {
        "v_num_grad_steps": 12,
        "v_lr": 1.0,
        "v_weight_decay": 1e-3,
        "clamp_norm_factor": 4.0,
        "kl_factor": 0.0625,
        "mom2_update_weight": 500.0,
        "mom2_dataset": "model-sampled",
        "mom2_n_tokens": 10_000,
    },
}

# A preset holds the settings MEMIT and AlphaEdit share; AlphaEdit's own (threshold 2e-2, L2 10, sequential
# batches of 100: the published values for every model) are its hparams class's defaults.
PRESETS: dict[str, dict[str, Any]] = {**_PUBLISHED, **_MEASURED}


def fallback_hparams(model: nn.Module | ModelShape) -> dict[str, Any]:
    """For models without a preset: the SmolLM2 values with layers from `default_edit_layers` and lambda = m
    (the MLP width). lambda ~ m keeps k^T (lambda C)^-1 k ~ 1 for a typical key, the regime of the published
    GPT-J (m = 16384, lambda = 15000) and Llama-2-7B (m = 11008, lambda = 15000) settings."""
    shape = ModelShape.of(model)
    return {
        **_MEASURED["smollm2-135m"],
        "layers": list(default_edit_layers(shape)),
        "mom2_update_weight": float(shape.intermediate_size),
    }


def preset_for_model(model: nn.Module | ModelShape) -> str | None:
    """The preset name of a recognised model shape (KNOWN_MODELS), or None."""
    known = known_model(ModelShape.of(model))
    return known.label if known is not None and known.label in PRESETS else None


def preset_values(name: str) -> dict[str, Any]:
    """A preset's settings, with the edit layers of its model (KNOWN_MODELS: the one record of them)."""
    known = known_model_named(name)
    if name not in PRESETS or known is None:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return {**PRESETS[name], "layers": list(known.edit_layers)}
