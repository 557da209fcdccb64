"""`auto` compute dtypes: the probe's decision, its logging, its reuse, and every place that resolves it."""

from __future__ import annotations

import logging

import pytest
import torch

from editdecay.editing import build_editor
from editdecay.finetuning import FinetuneSpec
from editdecay.models import DtypeResolver, ModelShape
from editdecay.models.precision import FORCE_ENV, MIN_SPEEDUP, time_matmul
from tiny import tiny_model

SHAPE = ModelShape("llama", 30, 576, 1536, 49152)


def fake_cpu(bfloat16_over_float32: float) -> tuple[DtypeResolver, list[tuple]]:
    """A resolver whose 'measurement' says bfloat16 takes `bfloat16_over_float32` times the float32 time."""
    calls: list[tuple] = []

    def measure(device: str, dtype: torch.dtype, tokens: int, d_in: int, d_out: int) -> float:
        calls.append((device, dtype, tokens, d_in, d_out))
        return 0.001 * (bfloat16_over_float32 if dtype == torch.bfloat16 else 1.0)

    return DtypeResolver(measure=measure, forced=None), calls


def test_a_cpu_without_native_bfloat16_gets_float32_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    resolver, _ = fake_cpu(37.0)  # an AVX2-only CPU: scalar bfloat16 GEMM
    with caplog.at_level(logging.INFO, logger="editdecay.models.precision"):
        chosen = resolver.resolve("auto", device="cpu", d_in=576, d_out=1536, purpose="target steps")
    assert chosen == "float32"
    assert "bfloat16 is 37.0x slower on this CPU (no native support): target steps in float32" in caplog.text


def test_a_cpu_with_fast_bfloat16_gets_bfloat16(caplog: pytest.LogCaptureFixture) -> None:
    resolver, _ = fake_cpu(1 / 2.4)
    with caplog.at_level(logging.INFO, logger="editdecay.models.precision"):
        assert resolver.resolve("auto", device="cpu", d_in=576, d_out=1536, purpose="fine-tuning") == "bfloat16"
    assert "bfloat16 matmuls 2.4x faster here: fine-tuning in bfloat16" in caplog.text
    probe = resolver.probe("cpu", 576, 1536)
    assert probe.speedup == pytest.approx(2.4) and probe.to_dict()["chosen"] == "bfloat16"


def test_a_marginal_gain_is_not_worth_the_rounding() -> None:
    resolver, _ = fake_cpu(1 / (MIN_SPEEDUP * 0.95))
    assert resolver.resolve("auto", device="cpu", d_in=8, d_out=16, purpose="x") == "float32"


def test_an_explicit_dtype_is_honoured_with_a_warning_when_slower(caplog: pytest.LogCaptureFixture) -> None:
    resolver, _ = fake_cpu(20.0)
    with caplog.at_level(logging.WARNING, logger="editdecay.models.precision"):
        assert resolver.resolve("bfloat16", device="cpu", d_in=8, d_out=16, purpose="fine-tuning") == "bfloat16"
        assert resolver.resolve("float32", device="cpu", d_in=8, d_out=16, purpose="fine-tuning") == "float32"
    assert len(caplog.records) == 1
    assert "bfloat16 as requested, although bfloat16 is 20.0x slower" in caplog.text


def test_the_probe_runs_once_per_device_and_shape() -> None:
    resolver, calls = fake_cpu(0.5)
    for _ in range(3):
        resolver.resolve("auto", device="cpu", d_in=576, d_out=1536, purpose="x")
    assert len(calls) == 2  # one float32 and one bfloat16 product
    resolver.resolve("auto", device="cpu", d_in=640, d_out=2048, purpose="x")
    assert len(calls) == 4 and {c[3:] for c in calls} == {(576, 1536), (640, 2048)}


def test_the_environment_forces_the_answer_and_bad_values_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FORCE_ENV, "float32")
    resolver = DtypeResolver(measure=lambda *_: pytest.fail("a forced answer must not measure"))
    assert resolver.resolve("auto", device="cpu", d_in=8, d_out=16, purpose="x") == "float32"
    monkeypatch.setenv(FORCE_ENV, "fp8")
    with pytest.raises(ValueError, match="EDITDECAY_AUTO_DTYPE='fp8'"):
        DtypeResolver()
    with pytest.raises(ValueError, match="choose one of auto, bfloat16, float32"):
        DtypeResolver(forced="float32").resolve("int8", device="cpu", d_in=8, d_out=16, purpose="x")


def test_the_real_probe_times_both_dtypes() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        assert 0 < time_matmul("cpu", dtype, 4, 16, 32) < 1.0
    probe = DtypeResolver(forced=None).probe("cpu", 16, 32)
    assert probe.float32_s is not None and probe.bfloat16_s is not None and probe.chosen in ("bfloat16", "float32")


def test_editor_resolves_v_dtype_auto_from_the_probe() -> None:
    slow, _ = fake_cpu(37.0)
    fast, _ = fake_cpu(0.4)
    assert build_editor("memit", dtypes=slow).resolved_hparams(SHAPE, "cpu").v_dtype == "float32"
    assert build_editor("memit", dtypes=fast).resolved_hparams(SHAPE, "cpu").v_dtype == "bfloat16"
    # null keeps the model's own dtype; float16 is never probed.
    assert build_editor("memit", {"v_dtype": None}, dtypes=slow).resolved_hparams(SHAPE, "cpu").v_dtype is None
    assert (
        build_editor("memit", {"v_dtype": "float16"}, dtypes=slow).resolved_hparams(SHAPE, "cpu").v_dtype == "float16"
    )
    model = tiny_model("llama")
    assert build_editor("memit", dtypes=slow).resolved_hparams(model).v_dtype == "float32"
    with pytest.raises(ValueError, match="needs the device"):
        build_editor("memit", dtypes=slow).resolved_hparams(SHAPE)


def test_finetune_spec_resolves_compute_dtype_auto() -> None:
    spec = FinetuneSpec()
    assert spec.compute_dtype == "auto"
    slow, _ = fake_cpu(37.0)
    assert spec.with_resolved_dtype(slow, SHAPE, "cpu").compute_dtype == "float32"
    fast, _ = fake_cpu(0.4)
    resolved = spec.with_resolved_dtype(fast, tiny_model("llama"))
    assert resolved.compute_dtype == "bfloat16" and resolved.spec_id() != spec.spec_id()
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        FinetuneSpec(compute_dtype="float16")  # type: ignore[arg-type]
