"""Cache files of tensors that record the key they were computed for, so one is never used for other inputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from editdecay.storage import atomic_write_bytes

log = logging.getLogger(__name__)


def format_tag(fmt: str) -> str:
    """A cache format ("stats/1") as it appears in file names ("stats-1")."""
    return fmt.replace("/", "-")


def write_keyed_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], key: dict[str, Any], **metadata: str
) -> None:
    """Atomically write `tensors` (safetensors) with the cache `key` they were computed for in the metadata."""
    contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
    atomic_write_bytes(path, save(contiguous, metadata={"key": json.dumps(key, sort_keys=True), **metadata}))


def read_keyed_tensors(path: str | Path, key: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The tensors and metadata at `path` when it exists and was written for `key`, else None: a cache file
    is never used for inputs other than its own, nor when it is damaged (the caller then rewrites it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if json.loads(metadata.get("key", "{}")) != key:
            log.warning("Ignoring %s: it was stored for other inputs", path)
            return None
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as err:
        log.warning("Ignoring %s: it is unreadable (%s)", path, err)
        return None
