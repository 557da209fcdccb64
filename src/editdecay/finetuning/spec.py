"""What to fine-tune and how: one frozen, hashable spec per fine-tuning run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any, Literal, get_type_hints

from torch import nn

from editdecay.finetuning.methods import FINETUNE_METHODS
from editdecay.models.arch import ModelShape
from editdecay.models.precision import SPEED_DTYPES, DtypeResolver

LayerPolicy = Literal["all", "edited", "non_edited"]
LAYER_POLICIES: tuple[str, ...] = ("all", "edited", "non_edited")
COMPUTE_DTYPES: tuple[str, ...] = SPEED_DTYPES
DEFAULT_TARGETS: tuple[str, ...] = ("q", "k", "v", "up", "down")
LR_SCHEDULES: tuple[str, ...] = ("linear", "constant")


@dataclass(frozen=True)
class FinetuneSpec:
    """A fine-tuning run (docs/algorithms.md §5); defaults are the study's LoRA settings.

    `layers` is a policy (`all`, `edited`, `non_edited`) or explicit block indices; `targets` are
    ArchSpec short names (q, k, v, o, gate, up, down) or module paths relative to a block. Full
    fine-tuning trains the weights (and biases) of those modules; embeddings and norms stay frozen.
    `batch_size` is the micro-batch; one optimizer step sees `batch_size * grad_accum` examples and
    averages the loss over all their target tokens. `lr=None` takes the method's default (LoRA/DoRA
    2e-4, full 2e-5). The warmup is max(warmup_steps, ceil(warmup_ratio * total steps)), then a linear
    decay (`lr_schedule: linear`) or a constant rate (`constant`). `compute_dtype` is the autocast dtype
    (`auto`: bfloat16 where a probe measures it faster, see editdecay.models.precision); weights and optimizer
    state are always float32. `gradient_checkpointing` keeps only each block's input and recomputes the rest in the
    backward pass, and takes the loss's vocabulary projection in chunks of positions: the same loss and gradients
    for much less memory and about a third more compute. `max_forward_tokens` splits each micro-batch into pieces of
    rows whose padded size (rows x longest row) is at most that many tokens, run one after another with their
    gradients summed: the step's examples, loss and gradients are unchanged (the loss is a sum over the step's
    target tokens divided by their count), only the activation memory of one forward pass shrinks.
    """

    method: str = "lora"
    layers: LayerPolicy | tuple[int, ...] = "all"
    targets: tuple[str, ...] = DEFAULT_TARGETS
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    lr: float | None = None
    epochs: int = 3
    batch_size: int = 16
    grad_accum: int = 1
    warmup_steps: int = 0
    warmup_ratio: float = 0.05
    lr_schedule: Literal["linear", "constant"] = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    cutoff_len: int = 256
    train_on_inputs: bool = True
    group_by_length: bool = True
    compute_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    max_steps: int | None = None
    val_fraction: float | None = None
    gradient_checkpointing: bool = False
    max_forward_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.method not in FINETUNE_METHODS:
            raise ValueError(
                f"Unknown fine-tuning method {self.method!r}; choose one of {', '.join(FINETUNE_METHODS)}."
            )
        object.__setattr__(self, "layers", _normalise_layers(self.layers))
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
            raise ValueError(f"targets must be a non-empty list of module names, got {self.targets!r}")
        object.__setattr__(self, "targets", targets)
        if self.lr is None:
            object.__setattr__(self, "lr", FINETUNE_METHODS[self.method].default_lr)
        checks = [
            (self.r >= 1, "r must be >= 1"),
            (self.alpha > 0, "alpha must be > 0"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.lr is not None and self.lr > 0, "lr must be > 0"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm must be > 0 or None"),
            (self.cutoff_len >= 8, "cutoff_len must be >= 8 tokens"),
            (self.compute_dtype in COMPUTE_DTYPES, f"compute_dtype must be one of {COMPUTE_DTYPES}"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1 or None"),
            (self.val_fraction is None or 0.0 < self.val_fraction < 1.0, "val_fraction must be in (0, 1) or None"),
            (
                self.max_forward_tokens is None or self.max_forward_tokens >= 1,
                "max_forward_tokens must be >= 1 or None",
            ),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError(f"Invalid FinetuneSpec: {'; '.join(problems)}.")

    def with_resolved_dtype(
        self, dtypes: DtypeResolver, model: nn.Module | ModelShape, device: str | None = None
    ) -> FinetuneSpec:
        """This spec with `compute_dtype` concrete (`auto` measured) for the model's shape on `device` (default:
        the model's own device)."""
        shape = ModelShape.of(model)
        if device is None:
            if isinstance(model, ModelShape):
                raise ValueError("with_resolved_dtype of a ModelShape needs the device the run will use.")
            device = str(next(model.parameters()).device)
        chosen = dtypes.resolve(
            self.compute_dtype,
            device=device,
            d_in=shape.hidden_size,
            d_out=shape.intermediate_size,
            purpose="fine-tuning",
        )
        return replace(self, compute_dtype=chosen)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = self.layers if isinstance(self.layers, str) else list(self.layers)
        data["targets"] = list(self.targets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown FinetuneSpec fields {unknown}; known fields: {sorted(known)}.")
        data = dict(data)
        if isinstance(data.get("layers"), list):
            data["layers"] = tuple(data["layers"])
        if isinstance(data.get("targets"), list):
            data["targets"] = tuple(data["targets"])
        return cls(**data)

    def spec_id(self) -> str:
        """Content hash of the resolved spec (stable across processes and Python versions)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def spec_fields() -> dict[str, tuple[Any, Any]]:
    """Each FinetuneSpec field's type hint and default, in field order: what the experiment config's `finetune`
    section and the `finetune` command's options are built from."""
    hints = get_type_hints(FinetuneSpec)
    found: dict[str, tuple[Any, Any]] = {}
    for f in fields(FinetuneSpec):
        factory = f.default_factory
        found[f.name] = (hints[f.name], f.default if factory is MISSING else factory())
    return found


def _normalise_layers(layers: object) -> str | tuple[int, ...]:
    if isinstance(layers, str):
        if layers in LAYER_POLICIES:
            return layers
        raise ValueError(
            f"Unknown layer policy {layers!r}; choose one of {', '.join(LAYER_POLICIES)} or give block indices."
        )
    if (
        isinstance(layers, list | tuple)
        and layers
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
    ):
        return tuple(sorted(set(layers)))
    raise ValueError(f"layers must be {', '.join(LAYER_POLICIES)} or a non-empty list of block indices, got {layers!r}")
