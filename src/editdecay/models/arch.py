"""Where each architecture keeps its blocks, MLP output projection, final norm and unembedding.

One `ArchSpec` per family, looked up by `config.model_type`. Register a new family with
`register_arch(ArchSpec(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from numbers import Integral
from typing import Any, Protocol, cast

import torch
from torch import nn
from transformers import PretrainedConfig

from editdecay.models.precision import mlp_shape


class UnsupportedArchitectureError(ValueError):
    """The model's `config.model_type` has no registered ArchSpec."""


class CausalLM(Protocol):
    """The members of a transformers causal LM (or of a PEFT wrapper, which forwards them) that editdecay calls.
    Models are passed around as `nn.Module`, whose `__getattr__` types every such member `Tensor | Module`."""

    config: PretrainedConfig

    def get_input_embeddings(self) -> nn.Module: ...
    def get_output_embeddings(self) -> nn.Module | None: ...
    def set_attn_implementation(self, attn_implementation: str) -> None: ...
    # Token ids: editdecay never asks generate for a dict (return_dict_in_generate).
    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor: ...


def causal_lm(model: nn.Module) -> CausalLM:
    """`model` typed as the transformers causal LM it is (no check: a typing view only)."""
    return cast(CausalLM, model)


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one transformer family; `{}` in a template is the block index."""

    name: str
    model_types: tuple[str, ...]
    blocks_path: str
    mlp_out_template: str
    final_norm_path: str
    # GPT-2's Conv1D stores its weight as (in_features, out_features): transpose before W @ k.
    mlp_out_transposed: bool = False
    # Short target names (q, k, v, o, gate, up, down) -> module path relative to a block.
    block_modules: dict[str, str] = field(default_factory=dict, hash=False)
    # A norm applied to the MLP output before the residual add (Gemma 2/3), relative to a block; the editors
    # then pull the wanted residual change back through it (editing/outnorm.py).
    post_mlp_norm: str | None = None
    # Config keys of attention's sliding window and of the final logit soft-cap, where the family has them.
    sliding_window_key: str = "sliding_window"
    logit_softcap_key: str = "final_logit_softcapping"

    def block_path(self, layer: int) -> str:
        return f"{self.blocks_path}.{layer}"

    def mlp_out_path(self, layer: int) -> str:
        return self.mlp_out_template.format(layer)

    def mlp_out_weight_name(self, layer: int) -> str:
        return f"{self.mlp_out_path(layer)}.weight"

    def sliding_window(self, config: object) -> int | None:
        """The attention window in tokens, or None for full attention."""
        window = getattr(config, self.sliding_window_key, None)
        return int(window) if window else None

    def logit_softcap(self, config: object) -> float | None:
        """c in logits = c * tanh(logits / c), or None when the family does not cap its logits."""
        cap = getattr(config, self.logit_softcap_key, None)
        return float(cap) if cap else None


_LLAMA_MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}

_REGISTRY: list[ArchSpec] = [
    ArchSpec(
        name="gpt2",
        model_types=("gpt2",),
        blocks_path="transformer.h",
        mlp_out_template="transformer.h.{}.mlp.c_proj",
        final_norm_path="transformer.ln_f",
        mlp_out_transposed=True,
        # GPT-2 fuses q, k and v into one Conv1D.
        block_modules={
            "q": "attn.c_attn",
            "k": "attn.c_attn",
            "v": "attn.c_attn",
            "o": "attn.c_proj",
            "up": "mlp.c_fc",
            "down": "mlp.c_proj",
        },
    ),
    ArchSpec(
        name="gptj",
        model_types=("gptj",),
        blocks_path="transformer.h",
        mlp_out_template="transformer.h.{}.mlp.fc_out",
        final_norm_path="transformer.ln_f",
        block_modules={
            "q": "attn.q_proj",
            "k": "attn.k_proj",
            "v": "attn.v_proj",
            "o": "attn.out_proj",
            "up": "mlp.fc_in",
            "down": "mlp.fc_out",
        },
    ),
    ArchSpec(
        name="gpt_neox",
        model_types=("gpt_neox",),
        blocks_path="gpt_neox.layers",
        mlp_out_template="gpt_neox.layers.{}.mlp.dense_4h_to_h",
        final_norm_path="gpt_neox.final_layer_norm",
        block_modules={
            "q": "attention.query_key_value",
            "k": "attention.query_key_value",
            "v": "attention.query_key_value",
            "o": "attention.dense",
            "up": "mlp.dense_h_to_4h",
            "down": "mlp.dense_4h_to_h",
        },
    ),
    ArchSpec(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "gemma"),
        blocks_path="model.layers",
        mlp_out_template="model.layers.{}.mlp.down_proj",
        final_norm_path="model.norm",
        block_modules=_LLAMA_MODULES,
    ),
    ArchSpec(
        name="gemma",
        model_types=("gemma2", "gemma3_text"),
        blocks_path="model.layers",
        mlp_out_template="model.layers.{}.mlp.down_proj",
        final_norm_path="model.norm",
        block_modules=_LLAMA_MODULES,
        post_mlp_norm="post_feedforward_layernorm",
    ),
]


def register_arch(spec: ArchSpec) -> None:
    """Add an architecture family; its model types are taken away from any spec that listed them before."""
    if not spec.model_types:
        raise ValueError(f"ArchSpec {spec.name!r} lists no model types.")
    if "{}" not in spec.mlp_out_template:
        raise ValueError(f"ArchSpec {spec.name!r}: mlp_out_template {spec.mlp_out_template!r} needs '{{}}'.")
    for index, existing in reversed(list(enumerate(_REGISTRY))):
        kept = tuple(t for t in existing.model_types if t not in spec.model_types)
        if not kept:
            del _REGISTRY[index]
        elif kept != existing.model_types:
            _REGISTRY[index] = replace(existing, model_types=kept)
    _REGISTRY.append(spec)


def supported_model_types() -> list[str]:
    return sorted(t for spec in _REGISTRY for t in spec.model_types)


def arch_for(model_or_type: nn.Module | str) -> ArchSpec:
    """The ArchSpec of a model (or of a `config.model_type` string)."""
    model_type = model_or_type if isinstance(model_or_type, str) else _model_type(model_or_type)
    for spec in _REGISTRY:
        if model_type in spec.model_types:
            return spec
    raise UnsupportedArchitectureError(
        f"Architecture {model_type!r} is not supported. Supported model types: "
        f"{', '.join(supported_model_types())}. To add one, call "
        "editdecay.models.register_arch(ArchSpec(name=..., model_types=(...,), blocks_path=..., "
        "mlp_out_template='...{}...', final_norm_path=..., block_modules={...}))."
    )


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedArchitectureError(f"{type(model).__name__} has no `config`; expected a transformers model.")
    # A PEFT wrapper keeps the base config; text configs of multimodal models are not handled here.
    return str(config.model_type)


def num_blocks(model: nn.Module) -> int:
    return len(cast(nn.ModuleList, get_module(model, arch_for(model).blocks_path)))  # blocks_path names a ModuleList


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path, with an error that names the path."""
    try:
        return model.get_submodule(path)
    except AttributeError as err:
        raise KeyError(f"{type(model).__name__} has no module {path!r}") from err


def block(model: nn.Module, layer: int) -> nn.Module:
    check_layers(model, [layer])
    return get_module(model, arch_for(model).block_path(layer))


def mlp_out(model: nn.Module, layer: int) -> nn.Module:
    check_layers(model, [layer])
    return get_module(model, arch_for(model).mlp_out_path(layer))


def check_layers(model: nn.Module | ModelShape, layers: list[int] | tuple[int, ...]) -> None:
    n = model.num_layers if isinstance(model, ModelShape) else num_blocks(model)
    not_ints = [layer for layer in layers if isinstance(layer, bool) or not isinstance(layer, Integral)]
    if not_ints:
        raise TypeError(f"Layer indices must be integers, got {not_ints}.")
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ValueError(f"Layers {bad} are outside the model: it has {n} blocks (valid indices 0..{n - 1}).")


def edit_matrix(model: nn.Module, layer: int) -> torch.Tensor:
    """The MLP output projection of `layer` as W (d_out x d_in), a view when possible (docs/algorithms.md §0)."""
    weight = _weight(mlp_out(model, layer))
    return weight.T if arch_for(model).mlp_out_transposed else weight


def _weight(module: nn.Module) -> torch.Tensor:
    """`module.weight`, a parameter of a Linear, Conv1D or Embedding (`nn.Module` types it `Tensor | Module`)."""
    return cast(torch.Tensor, module.weight)


def unembedding(model: nn.Module) -> nn.Module:
    """The output embedding (lm_head), tied or not: always through the model's accessor."""
    head = causal_lm(model).get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding (is it a causal LM?).")
    return head


def final_norm(model: nn.Module) -> nn.Module:
    return get_module(model, arch_for(model).final_norm_path)


def embeddings_tied(model: nn.Module) -> bool:
    head = causal_lm(model).get_output_embeddings()
    inputs = causal_lm(model).get_input_embeddings()
    return head is not None and _weight(head).data_ptr() == _weight(inputs).data_ptr()


@dataclass(frozen=True)
class KnownModel:
    """A model size with its edit layers, recognised by its config shape; `label` names its editing preset.
    The one record of a model's edit layers: presets and `default_edit_layers` both read it."""

    label: str
    model_type: str
    num_layers: int
    hidden_size: int
    edit_layers: tuple[int, ...]
    how_chosen: str
    vocab_sizes: tuple[int, int] = (0, 1 << 30)  # [low, high): tells apart sizes that share a shape
    rome_layer: int | None = None  # the single layer ROME and FT-L edit (None: not recorded)

    def matches(self, shape: ModelShape) -> bool:
        return (self.model_type, self.num_layers, self.hidden_size) == (
            shape.model_type,
            shape.num_layers,
            shape.hidden_size,
        ) and self.vocab_sizes[0] <= shape.vocab_size < self.vocab_sizes[1]


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel("gpt2-xl", "gpt2", 48, 1600, (13, 14, 15, 16, 17), "published (MEMIT; ROME: 17)", rome_layer=17),
    KnownModel("gpt-j-6b", "gptj", 28, 4096, (3, 4, 5, 6, 7, 8), "published (MEMIT; ROME: 5)", rome_layer=5),
    KnownModel("llama-2-7b", "llama", 32, 4096, (4, 5, 6, 7, 8), "published (AlphaEdit)", (0, 128_000)),
    KnownModel("llama-3-8b", "llama", 32, 4096, (4, 5, 6, 7, 8), "published (AlphaEdit)", (128_000, 1 << 30)),
    KnownModel(
        "smollm2-135m",
        "llama",
        30,
        576,
        (4, 5, 6, 7, 8),
        "causal tracing of MLP outputs peaks at layer 7 (window 5-9), edited one layer earlier as measured "
        "best; docs/edit_layers.md; ROME: 7, measured (docs/algorithms.md §9)",
        rome_layer=7,
    ),
    KnownModel(
        "gemma3-270m",
        "gemma3_text",
        18,
        640,
        (3, 4, 5, 6, 7),
        "causal tracing of MLP outputs peaks at layer 4 (window 2-6), edited one layer later as measured "
        "best; docs/edit_layers.md; ROME: 6, measured (docs/algorithms.md §9)",
        rome_layer=6,
    ),
)


def known_model_named(label: str) -> KnownModel | None:
    return next((known for known in KNOWN_MODELS if known.label == label), None)


@dataclass(frozen=True)
class ModelShape:
    """What presets, default edit layers and the dtype probe need of a model; readable without its weights
    (`editdecay.models.loading.read_model_shape`), so store keys can be resolved before anything loads."""

    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int

    @classmethod
    def of_config(cls, config: PretrainedConfig, num_layers: int | None = None) -> ModelShape:
        hidden, width = mlp_shape(config)
        layers = num_layers if num_layers is not None else int(config.num_hidden_layers)
        return cls(str(config.model_type), layers, hidden, width, int(getattr(config, "vocab_size", 0) or 0))

    @classmethod
    def of(cls, model: nn.Module | ModelShape) -> ModelShape:
        if isinstance(model, ModelShape):
            return model
        _model_type(model)  # a clear error for a module without a config
        return cls.of_config(causal_lm(model).config, num_layers=num_blocks(model))


def known_model(model: nn.Module | ModelShape) -> KnownModel | None:
    shape = ModelShape.of(model)
    return next((known for known in KNOWN_MODELS if known.matches(shape)), None)


def default_edit_layers(model: nn.Module | ModelShape) -> tuple[int, ...]:
    """Recorded layers for known sizes; otherwise five early-middle blocks starting near depth/8."""
    known = known_model(model)
    if known is not None:
        return known.edit_layers
    n = ModelShape.of(model).num_layers
    width = min(5, n)
    start = min(max(n // 8, 0), n - width)
    return tuple(range(start, start + width))
