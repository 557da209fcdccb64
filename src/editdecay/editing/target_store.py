"""Disk cache of optimised target values z (docs/algorithms.md §1.3), so MEMIT and AlphaEdit share them.

The target optimisation only reads the model, the requests, the context templates and the target settings;
MEMIT and AlphaEdit run the same optimisation on the same unedited model, so a grid over both editors needs
it once. Only batches edited on the unmodified base model are cached (later sequential batches see a model
that earlier batches changed), one file per chunk of requests optimised together (`compute_targets`'s
`chunk_cache`), so a long optimisation resumes at its first unsaved chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from editdecay.data import EditRequest
from editdecay.editing.keyed_tensors import format_tag, read_keyed_tensors, write_keyed_tensors
from editdecay.editing.target_values import TargetResult, TargetSettings
from editdecay.locking import locked_compute

log = logging.getLogger(__name__)

# Format of the files TargetStore writes, part of their key and path: bump when the code that writes them
# (or computes what they hold) changes, so files of older code are never read.
TARGETS_FORMAT = "targets/2"  # 2: one file per chunk of z_batch_size requests


@dataclass(frozen=True)
class TargetKey:
    """Everything a batch's target values depend on."""

    fingerprint: str  # of the model the targets were optimised on
    requests: str  # digest of the requests' subjects, prompts and new targets, in order
    contexts: str  # digest of the context templates
    settings: str  # TargetSettings as JSON
    batch_size: int  # requests optimised together (results agree only within float tolerance across sizes)
    format: str = TARGETS_FORMAT

    @classmethod
    def of(
        cls,
        fingerprint: str,
        requests: Sequence[EditRequest],
        contexts: Sequence[str],
        settings: TargetSettings,
        batch_size: int,
    ) -> TargetKey:
        content = [[r.case_id, r.subject, r.template, r.target_new] for r in requests]
        return cls(
            fingerprint,
            _digest(content),
            _digest(list(contexts)),
            json.dumps(asdict(settings), sort_keys=True),
            batch_size,
        )

    def relative_path(self) -> Path:
        return Path(self.fingerprint) / f"{_digest(asdict(self))[:24]}.{format_tag(self.format)}.safetensors"


class TargetStore:
    """Target values under `root`, keyed by `TargetKey` (checked again on load); processes asking for the
    same key optimise them once (the others wait for, then read, the result)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def get(self, key: TargetKey, compute: Callable[[], TargetResult]) -> TargetResult:
        path = self.root / key.relative_path()

        def load() -> TargetResult | None:
            found = read_keyed_tensors(path, asdict(key))
            if found is None:
                return None
            log.info("Reusing target values from %s", path)
            tensors, meta = found
            return TargetResult(tensors["z"], tensors["z_init"], **json.loads(meta["diagnostics"]))

        def save(result: TargetResult) -> None:
            diagnostics = {f.name: getattr(result, f.name) for f in fields(result) if f.name not in ("z", "z_init")}
            write_keyed_tensors(
                path, {"z": result.z, "z_init": result.z_init}, asdict(key), diagnostics=json.dumps(diagnostics)
            )

        return locked_compute(path, load, compute, save)


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
