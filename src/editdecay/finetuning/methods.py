"""Fine-tuning methods: how to make a model copy trainable, and how to save and re-apply the result.

`full` trains the chosen weight matrices themselves and stores the change as a float32 delta;
`lora` and `dora` wrap the chosen modules with PEFT adapters (`use_dora=True` for DoRA) and store a
standard PEFT adapter directory. Register another method with `register_method`.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

log = logging.getLogger(__name__)

DELTA_FILE = "delta.safetensors"
ADAPTER_DIR = "adapter"


class MethodSettings(Protocol):
    """What a method reads of a FinetuneSpec (spec.py imports this module, so not the other way round).
    Read-only members, so the frozen FinetuneSpec satisfies it."""

    @property
    def r(self) -> int: ...
    @property
    def alpha(self) -> float: ...
    @property
    def dropout(self) -> float: ...
    @property
    def seed(self) -> int: ...


class FinetuneMethod(Protocol):
    name: str
    default_lr: float

    def trainable_count(self, module: nn.Module, spec: MethodSettings) -> int:
        """How many parameters training `module` adds to the optimizer."""

    def prepare(self, model: nn.Module, modules: list[str], spec: MethodSettings) -> nn.Module:
        """Make `modules` of `model` (a private float32 copy, all frozen) trainable; return what to train."""

    def save(self, trained: nn.Module, base: nn.Module, directory: Path) -> None:
        """Write the result of training `trained` (prepared from a copy of `base`) into `directory`."""

    def load(self, base: nn.Module, directory: Path, merge: bool) -> nn.Module:
        """A new fine-tuned model built from a copy of `base` and the files in `directory`."""

    def merged_weights(self, base: nn.Module, directory: Path) -> dict[str, torch.Tensor]:
        """Parameter name -> the value `load(base, directory, merge=True)` gives it, for every parameter the
        result changes, without copying the model (what a resident model swaps in; experiments/resident.py)."""


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or of GPT-2's Conv1D (whose weight is stored transposed)."""
    if isinstance(module, Conv1D):
        fan_in, fan_out = module.weight.shape
        return int(fan_in), int(fan_out)
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    raise TypeError(f"{type(module).__name__} is not a linear layer (nn.Linear or Conv1D)")


def _as_float32_copy(base: nn.Module) -> nn.Module:
    model = copy.deepcopy(base)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        log.info("Building the fine-tuned model in float32 (the base is %s).", next(base.parameters()).dtype)
        model.float()
    return model


def _finish(model: nn.Module, base: nn.Module) -> nn.Module:
    """Eval mode, frozen, and in `base`'s dtype: the groups of a run (M, Med, Mft, Med_ft) share one precision, so
    their differences are those of the weights, not of a float32-vs-bfloat16 change. Merging happened before the
    cast, in float32."""
    model.to(next(base.parameters()).dtype)
    model.eval()
    model.requires_grad_(False)
    return model


@contextmanager
def _peft_deprecation_quiet() -> Iterator[None]:
    """peft 0.21's PeftModel reads `is_gradient_checkpointing`, which transformers 5 deprecates (not ours)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


class FullFinetune:
    name = "full"
    default_lr = 2e-5

    def trainable_count(self, module: nn.Module, spec: MethodSettings) -> int:
        return sum(p.numel() for p in module.parameters(recurse=False))

    def prepare(self, model: nn.Module, modules: list[str], spec: MethodSettings) -> nn.Module:
        for name in modules:
            model.get_submodule(name).requires_grad_(True)
        return model

    def save(self, trained: nn.Module, base: nn.Module, directory: Path) -> None:
        delta = {
            name: (param.detach() - base.get_parameter(name).detach().float()).contiguous()
            for name, param in trained.named_parameters()
            if param.requires_grad
        }
        save_file(delta, str(directory / DELTA_FILE))

    def load(self, base: nn.Module, directory: Path, merge: bool) -> nn.Module:
        model = _as_float32_copy(base)
        with torch.no_grad():
            for _name, param, delta in _stored_deltas(model, directory):
                param.add_(delta)
        return _finish(model, base)

    def merged_weights(self, base: nn.Module, directory: Path) -> dict[str, torch.Tensor]:
        return {
            name: (param.detach().float() + delta.to(param.device)).to(param.dtype)
            for name, param, delta in _stored_deltas(base, directory)
        }


def _stored_deltas(model: nn.Module, directory: Path) -> Iterator[tuple[str, nn.Parameter, torch.Tensor]]:
    """(name, the model's parameter, its stored float32 delta) for every delta of a full fine-tuning result."""
    for name, delta in load_file(str(directory / DELTA_FILE)).items():
        param = model.get_parameter(name)
        if param.shape != delta.shape:
            raise ValueError(
                f"{directory / DELTA_FILE}: delta for {name} has shape {tuple(delta.shape)}, "
                f"the model's parameter has {tuple(param.shape)}"
            )
        yield name, param, delta


class LoraFinetune:
    default_lr = 2e-4

    def __init__(self, name: str, use_dora: bool, **lora_options: Any) -> None:
        """`lora_options` are passed on to PEFT's LoraConfig (e.g. use_rslora=True)."""
        self.name = name
        self.use_dora = use_dora
        self.lora_options = lora_options

    def trainable_count(self, module: nn.Module, spec: MethodSettings) -> int:
        fan_in, fan_out = linear_shape(module)
        # A (r x in) and B (out x r); DoRA adds one magnitude per output feature.
        return spec.r * (fan_in + fan_out) + (fan_out if self.use_dora else 0)

    def prepare(self, model: nn.Module, modules: list[str], spec: MethodSettings) -> nn.Module:
        from peft import LoraConfig, get_peft_model  # imported when used: peft costs ~2 s at every CLI start

        config = LoraConfig(
            r=spec.r,
            lora_dropout=spec.dropout,
            target_modules=list(modules),
            lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft annotates it int; a float works (alpha / r)
            use_dora=self.use_dora,
            bias="none",
            task_type="CAUSAL_LM",
            fan_in_fan_out=isinstance(model.get_submodule(modules[0]), Conv1D),
            **self.lora_options,
        )
        # The adapter initialisation draws from torch's global generator: seed it for reproducibility.
        torch.manual_seed(spec.seed)
        with _peft_deprecation_quiet():
            return get_peft_model(model, config)

    def save(self, trained: nn.Module, base: nn.Module, directory: Path) -> None:
        from peft import PeftModel

        if not isinstance(trained, PeftModel):
            raise TypeError(f"{self.name} training produced {type(trained).__name__}, expected a PeftModel")
        trained.save_pretrained(str(directory / ADAPTER_DIR))

    def load(self, base: nn.Module, directory: Path, merge: bool) -> nn.Module:
        # Merging happens in float32: bf16 would round small adapter updates away.
        model = _as_float32_copy(base) if merge else copy.deepcopy(base)
        from peft import PeftModel

        with _peft_deprecation_quiet():
            peft_model = PeftModel.from_pretrained(model, str(directory / ADAPTER_DIR), is_trainable=False)
        if merge:
            return _finish(peft_model.merge_and_unload(), base)
        return _finish(peft_model.get_base_model(), base)

    def merged_weights(self, base: nn.Module, directory: Path) -> dict[str, torch.Tensor]:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer

        # A copy of the module tree that SHARES every parameter with `base`; PEFT wraps the adapted modules of the
        # copy, and each adapted weight is replaced by a private float32 copy before merging (as `load` merges in
        # float32), so `base` is never written to and only the adapted weights are duplicated.
        shell = copy.deepcopy(base, memo={id(p): p for p in base.parameters()})
        with _peft_deprecation_quiet():
            peft_model = PeftModel.from_pretrained(shell, str(directory / ADAPTER_DIR), is_trainable=False)
        adapted = {name: m for name, m in peft_model.get_base_model().named_modules() if isinstance(m, LoraLayer)}
        for layer in adapted.values():
            base_layer = layer.get_base_layer()
            weight = base_layer.get_parameter("weight")
            base_layer.weight = nn.Parameter(weight.detach().float().clone(), requires_grad=False)
        merged_model = peft_model.merge_and_unload()
        dtype = next(base.parameters()).dtype
        return {f"{name}.weight": merged_model.get_submodule(name).weight.detach().to(dtype) for name in adapted}


FINETUNE_METHODS: dict[str, FinetuneMethod] = {
    "full": FullFinetune(),
    "lora": LoraFinetune("lora", use_dora=False),
    "dora": LoraFinetune("dora", use_dora=True),
}


def register_method(method: FinetuneMethod) -> None:
    """Add (or replace) a fine-tuning method under `method.name`."""
    FINETUNE_METHODS[method.name] = method
