"""Layer policies: which exact modules a fine-tuning run trains, checked against the model."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from tqdm.auto import tqdm

from editdecay.finetuning.methods import FINETUNE_METHODS, linear_shape
from editdecay.finetuning.spec import FinetuneSpec
from editdecay.models import arch_for, check_layers, num_blocks


def resolve_layers(model: nn.Module, spec: FinetuneSpec, edited_layers: Sequence[int] | None) -> list[int]:
    """The block indices a spec's layer policy selects on this model."""
    n = num_blocks(model)
    if isinstance(spec.layers, tuple):
        check_layers(model, spec.layers)
        return list(spec.layers)
    if spec.layers == "all":
        return list(range(n))
    if not edited_layers:
        raise ValueError(
            f"Layer policy {spec.layers!r} needs the edited layers: pass edited_layers (the WeightPatch's "
            "`.layers`; on the command line, --patch DIR) or give explicit block indices."
        )
    edited = sorted(set(edited_layers))
    check_layers(model, edited)
    if spec.layers == "edited":
        return edited
    rest = [i for i in range(n) if i not in edited]
    if not rest:
        raise ValueError(f"Layer policy 'non_edited' selects nothing: all {n} blocks were edited.")
    return rest


def resolve_trainable_modules(
    model: nn.Module, spec: FinetuneSpec, edited_layers: Sequence[int] | None = None, *, verbose: bool = True
) -> list[str]:
    """Exact names of the modules to train, in block order; prints per-block module and parameter counts.

    Raises when a block or a target matches nothing, naming the block, the target and the known names.
    GPT-2's fused q/k/v projection is listed once.
    """
    arch = arch_for(model)
    method = FINETUNE_METHODS[spec.method]
    names: list[str] = []
    per_block: dict[int, tuple[int, int]] = {}
    for layer in resolve_layers(model, spec, edited_layers):
        block_modules: dict[str, nn.Module] = {}
        for target in spec.targets:
            name = f"{arch.block_path(layer)}.{arch.block_modules.get(target, target)}"
            block_modules[name] = _target_module(model, name, target, layer, arch.name, sorted(arch.block_modules))
        per_block[layer] = (len(block_modules), sum(method.trainable_count(m, spec) for m in block_modules.values()))
        names.extend(block_modules)
    if verbose:
        for line in _summary(spec, per_block):
            tqdm.write(line)
    return names


def _target_module(model: nn.Module, name: str, target: str, layer: int, arch: str, known: list[str]) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if module is None:
        raise ValueError(
            f"Target {target!r} matches nothing in block {layer} of this {arch} model (no module {name!r}). "
            f"Use the short names {', '.join(known)} or a module path relative to a block."
        )
    try:
        linear_shape(module)
    except TypeError as err:
        raise ValueError(
            f"Target {target!r} in block {layer} is {name!r}, a {type(module).__name__}: "
            "only linear layers can be fine-tuned by target name."
        ) from err
    return module


def _summary(spec: FinetuneSpec, per_block: dict[int, tuple[int, int]]) -> list[str]:
    """One line per run of consecutive blocks with identical counts."""
    total_modules = sum(m for m, _ in per_block.values())
    total_params = sum(p for _, p in per_block.values())
    lines = [
        f"{spec.method}: training {total_modules} modules ({','.join(spec.targets)}) in {len(per_block)} "
        f"blocks, {total_params:,} parameters"
    ]
    runs: list[tuple[int, int, tuple[int, int]]] = []
    for layer, counts in per_block.items():
        if runs and runs[-1][1] == layer - 1 and runs[-1][2] == counts:
            runs[-1] = (runs[-1][0], layer, counts)
        else:
            runs.append((layer, layer, counts))
    for first, last, (modules, params) in runs:
        blocks = f"block {first}" if first == last else f"blocks {first}-{last}"
        lines.append(f"  {blocks}: {modules} modules, {params:,} parameters{' each' if first != last else ''}")
    return lines
