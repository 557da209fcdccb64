"""Exclusive file locks, so that processes needing the same cached result compute it once.

A result at `target` is guarded by the lock file `.<name>.lock` beside it. Results are written atomically
(storage.py), so a finished one can be read without the lock; the lock only serialises the check-and-compute.
`flock` locks belong to an open file, so threads of one process exclude each other too, and the kernel drops
a lock when its holder dies: a crashed worker leaves a lock file that is simply reused, never a stale lock.
Pitfalls: never take a lock the process already holds (flock would wait on itself), and take nested locks
in one fixed order (an artifact, then statistics or target values, then sampled sequences), or two workers
can deadlock.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def lock_path(target: str | Path) -> Path:
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextmanager
def file_lock(target: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of `target` for the block (waiting for any other holder); yields `target`."""
    target = Path(target)
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield target
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def locked_compute(
    target: str | Path, load: Callable[[], T | None], compute: Callable[[], T], save: Callable[[T], None]
) -> T:
    """The result at `target`: `load()` when it is finished, otherwise computed and saved exactly once.

    `load` returns None unless the finished result for the caller's key is there; `save` must write
    atomically. Without the lock, a finished result is returned at once; with it, `load` runs again
    (another process may have finished meanwhile) before `compute` and `save` run.
    """
    found = load()
    if found is not None:
        return found
    with file_lock(target):
        found = load()
        if found is not None:
            log.info("%s was computed by another worker meanwhile", target)
            return found
        result = compute()
        save(result)
        return result
