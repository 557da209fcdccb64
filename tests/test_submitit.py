"""A two-configuration grid through submitit's local executor gives the local executor's results; a resubmitted
grid submits nothing; a job that cannot see the store says so."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from editdecay.config import GridConfig
from editdecay.experiments import LocalExecutor, expand_grid, make_executor
from editdecay.experiments.submitit_executor import SharedFilesystemError, checked_chain
from pipeline_fixtures import write_tiny_experiment
from test_ray import _patch_dir

submitit = pytest.importorskip("submitit", reason="the slurm extra is not installed")


@pytest.mark.slow
def test_submitit_grid_equals_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from editdecay.editing import WeightPatch

    raw = write_tiny_experiment(tmp_path)
    configs = expand_grid(GridConfig(name="g", base=raw, grid={"editor.name": ["memit", "alphaedit"]}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the jobs below run with one thread too, so float reductions agree
    try:
        local = LocalExecutor().run(configs, tmp_path / "local-store", tmp_path / "local-runs")
    finally:
        torch.set_num_threads(threads)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    executor = make_executor("submitit", cluster="local", folder=tmp_path / "logs" / "%j", timeout_min=20)
    remote = executor.run(configs, tmp_path / "job-store", tmp_path / "job-runs")
    assert sorted(s for r in remote for s in r.executed) == sorted(s for r in local for s in r.executed)
    for here, there in zip(local, remote, strict=True):
        assert here.run_dir.name == there.run_dir.name and (there.run_dir / "DONE").is_file()
        for table in ("edits.parquet", "metrics.parquet", "decay.parquet", "activations.parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(here.run_dir / table), pd.read_parquet(there.run_dir / table))
        mine = WeightPatch.load(_patch_dir(tmp_path / "local-store", here))
        theirs = WeightPatch.load(_patch_dir(tmp_path / "job-store", there))
        assert all(torch.equal(delta, theirs.deltas[name]) for name, delta in mine.deltas.items())
    assert any((tmp_path / "logs").iterdir())  # submitit's job folders (pickles, logs)

    # Resubmitting the finished grid submits no job at all and reports nothing executed.
    jobs_before = len(list((tmp_path / "logs").iterdir()))
    again = executor.run(configs, tmp_path / "job-store", tmp_path / "job-runs")
    assert [r.executed for r in again] == [[], []] and len(list((tmp_path / "logs").iterdir())) == jobs_before


def test_a_job_that_cannot_see_the_store_refuses_to_run(tmp_path: Path) -> None:
    with pytest.raises(SharedFilesystemError, match="not visible from this node"):
        checked_chain([], str(tmp_path / "store"), str(tmp_path / "runs"), "token-written-elsewhere")


def test_bad_cluster_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="cluster 'pbs'"):
        make_executor("submitit", cluster="pbs")
