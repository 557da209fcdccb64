"""Stable identity of a model's weights, used in every cache key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

_CHUNK = 1 << 24


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the architecture config and every parameter's name, shape, dtype and bytes.

    Two models share a fingerprint exactly when they compute the same function with the same weights
    in the same dtype; applying a patch or fine-tuning changes it. Tied weights are hashed once.
    """
    digest = hashlib.blake2b(digest_size=16)
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(_config_identity(config).encode())
    seen: set[int] = set()
    for name, tensor in sorted(model.state_dict(keep_vars=False).items()):
        if tensor.data_ptr() in seen and tensor.numel() > 0:
            continue
        seen.add(tensor.data_ptr())
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _config_identity(config: object) -> str:
    as_dict = dict(config.to_dict())  # type: ignore[attr-defined]
    # Bookkeeping keys that do not change what the model computes.
    for key in (
        "_name_or_path",
        "_model_name_or_path",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "_commit_hash",
        "architectures",
        "use_cache",
    ):
        as_dict.pop(key, None)
    # sort_keys reaches nested dicts (rope parameters, ...), whose order depends on how the config was built.
    return json.dumps(as_dict, sort_keys=True, default=str)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data if flat.numel() else memoryview(b"")


def combine_fingerprints(*parts: str) -> str:
    """Identity of something derived from several identities (a base model plus a patch, say)."""
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
