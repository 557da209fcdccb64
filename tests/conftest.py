"""Shared fixtures: tiny random models, the optional ../shared/data folder, and real-model markers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_model, tiny_tokenizer

# `auto` compute dtypes resolve to float32 in tests unless the caller chose otherwise: the same numbers on a CPU
# with or without native bfloat16 (tests of the probe itself pass their own measurements).
os.environ.setdefault("EDITDECAY_AUTO_DTYPE", "float32")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers (pytest -n 2): one torch thread each, so two processes do not spin four
    # threads on two cores.
    import torch

    torch.set_num_threads(1)

_DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_DATA = Path(os.environ.get("EDITDECAY_SHARED_DATA", _DEFAULT_SHARED))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data is absent (looked in {SHARED_DATA}); data-file tests skipped")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M (float32), loaded once per test session."""
    from editdecay.models import ModelLoadError, load_model

    try:
        return load_model("smollm2-135m")
    except ModelLoadError as err:
        pytest.skip(f"SmolLM2-135M not installed: {err}")


@pytest.fixture
def llama_pair():
    return tiny_model("llama"), tiny_tokenizer(add_bos=True)


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests with one torch thread: tiny models are overhead-bound, and on a shared CPU
    two spinning threads per process make them many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
