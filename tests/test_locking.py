"""Cached results are computed once by concurrent processes, and a crashed writer's leftovers are never read.

The workers run in real processes ('spawn'), released together by a barrier so that both miss the cache.
Heavy imports stay inside the workers: a spawned child re-imports this module.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from editdecay.locking import file_lock, lock_path, locked_compute
from editdecay.storage import atomic_write_text

_SPAWN = multiprocessing.get_context("spawn")
_TIMEOUT = 120


def _text_result(target: str, counter: str) -> str:
    """The text at `target`, computed (slowly, logged to `counter`) when absent."""
    path = Path(target)

    def compute() -> str:
        with open(counter, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return f"computed by {os.getpid()}"

    return locked_compute(
        path, lambda: path.read_text() if path.is_file() else None, compute, lambda text: atomic_write_text(path, text)
    )


def _text_worker(barrier: Any, queue: Any, target: str, counter: str) -> None:
    barrier.wait(_TIMEOUT)
    queue.put(_text_result(target, counter))


def _crashing_writer(target: str) -> None:
    """Take the lock, leave half a temp file next to `target`, and die without cleaning up."""
    with file_lock(target):
        stray = Path(target).parent / f".{Path(target).name}.crashed.tmp"
        stray.write_text("half of a res")
        os._exit(1)


def _stats_worker(barrier: Any, root: str, counter: str, out: str) -> None:
    import torch

    from editdecay.editing import StatsStore
    from editdecay.editing import stats as stats_module
    from tiny import tiny_model, tiny_tokenizer

    torch.set_num_threads(1)

    def counted(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with open(counter, "a") as handle:
                handle.write(f"{name} {os.getpid()}\n")
            time.sleep(0.3)  # keeps the other process waiting even on an idle machine
            return function(*args, **kwargs)

        return wrapper

    stats_module.collect_stats = counted("collect", stats_module.collect_stats)
    stats_module.sample_sequences = counted("sample", stats_module.sample_sequences)
    model, tokenizer = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    barrier.wait(_TIMEOUT)
    moments = StatsStore(root).get(model, tokenizer, [1, 2], corpus="model-sampled", n_tokens=300, max_length=32)
    torch.save(moments, out)


def _run(processes: list[Any]) -> None:
    for process in processes:
        process.start()
    for process in processes:
        process.join(_TIMEOUT)
    assert [process.exitcode for process in processes] == [0] * len(processes)


def test_two_processes_compute_a_locked_result_once(tmp_path: Path) -> None:
    target, counter = tmp_path / "cache" / "result.txt", tmp_path / "computed.log"
    barrier, queue = _SPAWN.Barrier(2), _SPAWN.Queue()
    start = time.perf_counter()
    _run([_SPAWN.Process(target=_text_worker, args=(barrier, queue, str(target), str(counter))) for _ in range(2)])
    print(f"two processes, one compute: {time.perf_counter() - start:.2f} s")
    results = [queue.get(timeout=_TIMEOUT) for _ in range(2)]
    assert len(counter.read_text().splitlines()) == 1
    assert results[0] == results[1] == target.read_text()
    assert lock_path(target).is_file() and not list(target.parent.glob("*.tmp"))


def test_a_crashed_writer_leaves_nothing_that_is_read(tmp_path: Path) -> None:
    target, counter = tmp_path / "result.txt", tmp_path / "computed.log"
    crashed = _SPAWN.Process(target=_crashing_writer, args=(str(target),))
    crashed.start()
    crashed.join(_TIMEOUT)
    assert crashed.exitcode == 1
    # Its lock died with it: a lock file and half a temp file remain, no result.
    assert lock_path(target).is_file() and list(tmp_path.glob(".result.txt.*.tmp")) and not target.exists()
    result = _text_result(str(target), str(counter))
    assert result == f"computed by {os.getpid()}" == target.read_text()
    assert len(counter.read_text().splitlines()) == 1
    assert _text_result(str(target), str(counter)) == result
    assert len(counter.read_text().splitlines()) == 1


def test_damaged_or_foreign_target_values_are_recomputed(tmp_path: Path) -> None:
    import torch

    from editdecay.editing import TargetKey, TargetStore
    from editdecay.editing.target_values import TargetResult

    store, key = TargetStore(tmp_path), TargetKey("fp", "requests", "contexts", "{}", 2)
    path = tmp_path / key.relative_path()
    assert path.name.endswith(".targets-2.safetensors")
    calls: list[int] = []

    def compute() -> TargetResult:
        calls.append(1)
        return TargetResult(torch.ones(2, 4), torch.zeros(2, 4), [3, 4], [0.1, 0.2], [0.3, 0.4], 1.5, 4, ["suffix"])

    first = store.get(key, compute)
    good = path.read_bytes()
    # A truncated file (a copy cut short, a disk full) and a stray temp file are ignored, then replaced.
    path.write_bytes(good[: len(good) // 2])
    (path.parent / f".{path.name}.x.tmp").write_bytes(good[:10])
    again = store.get(key, compute)
    # Rewritten whole (safetensors may order its header differently, so compare what it holds).
    assert len(calls) == 2 and len(path.read_bytes()) == len(good)
    assert torch.equal(again.z, first.z) and again.steps == first.steps and again.modes == ["suffix"]
    # The same file under the key of another format (older code) is not read.
    older = TargetKey("fp", "requests", "contexts", "{}", 2, format="targets/0")
    assert older.relative_path() != key.relative_path()
    (tmp_path / older.relative_path()).write_bytes(good)
    store.get(older, compute)
    assert len(calls) == 3
    assert store.get(key, compute).final_nll == [0.3, 0.4] and len(calls) == 3


@pytest.mark.timeout(300)
def test_two_processes_collect_a_statistic_once(tmp_path: Path) -> None:
    import torch

    root, counter = tmp_path / "stats", tmp_path / "computed.log"
    outs = [tmp_path / f"out{i}.pt" for i in range(2)]
    barrier = _SPAWN.Barrier(2)
    start = time.perf_counter()
    _run([_SPAWN.Process(target=_stats_worker, args=(barrier, str(root), str(counter), str(out))) for out in outs])
    print(f"two processes, one statistic: {time.perf_counter() - start:.2f} s")
    calls = [line.split()[0] for line in counter.read_text().splitlines()]
    assert sorted(calls) == ["collect", "sample"]
    a, b = (torch.load(out) for out in outs)
    assert sorted(a) == sorted(b) == [1, 2]
    assert all(torch.equal(a[layer], b[layer]) for layer in (1, 2))
    assert len(list(root.rglob("layer*.stats-1.safetensors"))) == 2
    assert len(list(root.rglob("sampled-*.sampled-1.safetensors"))) == 1
