"""Content-addressed artifact store: one directory per (kind, key), complete only once marked DONE."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from editdecay.locking import file_lock

KINDS = ("stats", "patches", "finetunes", "evals", "activations")
DONE = "DONE"


class ArtifactStore:
    """Artifacts live at `root/<kind>/<key>/`; `DONE` is written last, so a half-made one is never read.

    Workers on one machine (or a shared filesystem with POSIX locks) coordinate through `lock`, so an
    artifact needed by two configurations is computed once.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; expected one of {KINDS}")
        return self.root / kind / key

    def is_done(self, kind: str, key: str) -> bool:
        return (self.path(kind, key) / DONE).is_file()

    def mark_done(self, kind: str, key: str) -> None:
        path = self.path(kind, key)
        (path / DONE).write_text("ok\n")

    @contextmanager
    def lock(self, kind: str, key: str) -> Iterator[Path]:
        """Hold an exclusive lock on one artifact while checking for it and computing it."""
        with file_lock(self.path(kind, key)) as path:
            yield path

    @property
    def stats_root(self) -> Path:
        return self.root / "stats"

    @property
    def editors_root(self) -> Path:
        """What editors train for a model (MEND's networks), keyed inside by everything they depend on."""
        return self.root / "editors"

    @property
    def targets_root(self) -> Path:
        """Target values shared by the editors of one (model, requests, seed) (editing/target_store.py)."""
        return self.root / "targets"

    @property
    def edit_progress_root(self) -> Path:
        """Sequential edits' progress, batch by batch, while they run (editing/edit_progress.py)."""
        return self.root / "edit-progress"
