"""Input identities used as content-addressed store keys, computable without loading a model."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from editdecay.models.fingerprint import file_sha256
from editdecay.models.loading import ModelSpec, builtin_gguf_path

_LARGE_FILE = 64 << 20
_EDGE = 1 << 20


def stable_hash(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts (dict keys sorted)."""
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def model_source_key(spec: ModelSpec) -> str:
    """Identity of the weights a ModelSpec names, and the dtype they are loaded in.

    GGUF files and built-in models: the file's sha256. Local directories: every file's name and size plus its
    content (edges only for files over 64 MiB). Hub ids: id and revision (a moving `main` is flagged).
    """
    kind = spec.kind
    if kind == "builtin":
        identity = f"gguf:{file_sha256(builtin_gguf_path(spec.source))}"
    elif kind == "gguf":
        identity = f"gguf:{file_sha256(spec.source)}"
    elif kind == "local":
        identity = f"dir:{_directory_digest(Path(spec.source))}"
    else:
        identity = f"hub:{spec.source}@{spec.revision or 'main'}"
    return stable_hash(identity, spec.dtype)


def _directory_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root)}:{size}".encode())
        with open(path, "rb") as handle:
            if size <= _LARGE_FILE:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_EDGE))
                handle.seek(-_EDGE, 2)
                digest.update(handle.read(_EDGE))
    return digest.hexdigest()


# Built-in data by the packaged file that defines it: the suites' JSON, the corpus generator's code.
_BUILTIN_SOURCES = {
    "edits": {"builtin": "builtin/edits.json", "builtin-control": "builtin/control.json"},
    "corpus": {"builtin": "builtin_corpus.py"},
}


def data_source_key(source: str, kind: str = "edits") -> str:
    """Identity of an edit dataset (`kind="edits"`) or a fine-tuning corpus (`kind="corpus"`).

    Built-in names are keyed by the packaged file that defines them, files and directories by content.
    """
    builtin = _BUILTIN_SOURCES[kind].get(source)
    if builtin is not None:
        content = resources.files("editdecay.data").joinpath(builtin).read_bytes()
        return f"{kind}:{source}:{hashlib.sha256(content).hexdigest()[:16]}"
    path = Path(source)
    if path.is_file():
        return f"file:{file_sha256(path)[:16]}"
    if path.is_dir():
        return f"dir:{_directory_digest(path)[:16]}"
    return f"name:{source}"
