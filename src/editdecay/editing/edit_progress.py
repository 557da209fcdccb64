"""Progress of a sequential edit (batches applied one after another), saved after every batch so that a killed run
resumes at the next batch instead of the first (AlphaEdit's protocol at 10,000 edits is 100 batches).

What is saved is what the next batch starts from, exactly: the edited layers' current weights (not base + summed
deltas, which would round differently), the summed deltas the patch will hold, the keys mapped so far, the batch
records, the editor's sequential state (AlphaEdit's C_p) and the timings. The key holds everything the sequence
depends on, so progress is only ever resumed by the same edit.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from editdecay.data import EditRequest
from editdecay.storage import atomic_directory

PROGRESS_FORMAT = "edit-progress/1"
# Saved after a batch when this long has passed since the last save: every batch of AlphaEdit's 100 edits, but not
# after each of ROME's one-edit batches (each save writes the edited layers' weights).
SAVE_EVERY_S = 60.0


def progress_key(editor: str, fingerprint: str, requests: Sequence[EditRequest], hparams: dict, seed: int) -> str:
    content = {
        "format": PROGRESS_FORMAT,
        "editor": editor,
        "fingerprint": fingerprint,
        "requests": [[r.case_id, r.subject, r.template, r.target_new] for r in requests],
        "hparams": hparams,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass
class BatchProgress:
    done: int  # batches finished
    weights: dict[int, torch.Tensor]  # edited layer -> its weight after `done` batches
    totals: dict[int, torch.Tensor]  # edited layer -> the summed delta so far
    keys: dict[int, torch.Tensor]  # edited layer -> the keys mapped so far, concatenated
    batches: list[dict[str, Any]]
    timings: dict[str, float]


class EditProgress:
    """One sequential edit's progress under `root/<key>/`, replaced atomically after every batch."""

    def __init__(self, root: Path, key: str) -> None:
        self.path = Path(root) / key

    def save(self, progress: BatchProgress, save_state: Callable[[Path], None]) -> None:
        with atomic_directory(self.path) as staging:
            tensors = {f"weight.{layer}": w for layer, w in progress.weights.items()}
            tensors |= {f"total.{layer}": t for layer, t in progress.totals.items()}
            tensors |= {f"keys.{layer}": k for layer, k in progress.keys.items()}
            save_file(
                {name: t.detach().cpu().contiguous() for name, t in tensors.items()},
                str(staging / "tensors.safetensors"),
            )
            meta = {"done": progress.done, "batches": progress.batches, "timings": progress.timings}
            (staging / "progress.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
            save_state(staging)

    def load(self) -> BatchProgress | None:
        if not (self.path / "progress.json").is_file():
            return None
        meta = json.loads((self.path / "progress.json").read_text(encoding="utf-8"))
        tensors = load_file(str(self.path / "tensors.safetensors"))

        def part(prefix: str) -> dict[int, torch.Tensor]:
            return {int(name.split(".", 1)[1]): t for name, t in tensors.items() if name.startswith(prefix + ".")}

        return BatchProgress(
            int(meta["done"]), part("weight"), part("total"), part("keys"), list(meta["batches"]), meta["timings"]
        )

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
