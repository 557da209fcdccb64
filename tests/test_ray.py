"""A two-configuration grid through a real local Ray cluster gives the local executor's results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from editdecay.config import GridConfig
from editdecay.experiments import LocalExecutor, RayExecutor, expand_grid
from pipeline_fixtures import write_tiny_experiment

ray = pytest.importorskip("ray", reason="the ray extra is not installed")


@pytest.mark.slow
def test_ray_grid_equals_local(tmp_path: Path) -> None:
    raw = write_tiny_experiment(tmp_path)
    configs = expand_grid(GridConfig(name="g", base=raw, grid={"editor.name": ["memit", "alphaedit"]}))
    assert len(configs) == 2

    # Ray workers run with one thread per task; match it locally so float reductions agree.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = LocalExecutor().run(configs, tmp_path / "local-store", tmp_path / "local-runs")
    finally:
        torch.set_num_threads(threads)

    executor = RayExecutor(ray_init={"num_cpus": 2, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}}})
    remote = executor.run(configs, tmp_path / "ray-store", tmp_path / "ray-runs")
    assert not ray.is_initialized()  # the executor shut down the cluster it started

    for here, there in zip(local, remote, strict=True):
        assert here.run_dir.name == there.run_dir.name == here.config.config_hash()
        assert set(there.executed) >= {"edit", "finetune Med", "evaluate Med_ft"}
        assert (there.run_dir / "DONE").is_file()
        for table in ("metrics.parquet", "edits_per_edit.parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(here.run_dir / table),
                                          pd.read_parquet(there.run_dir / table), rtol=1e-4, atol=1e-4)
