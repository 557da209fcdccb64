"""WeightPatch: apply / revert / save / load are exact, and a patch refuses a model it was not made for."""

from __future__ import annotations

import json

import pytest
import torch

from editdecay.editing import PatchMismatchError, WeightPatch
from editdecay.models import model_fingerprint
from test_edit_support import single_thread  # noqa: F401  (autouse fixture)
from tiny import tiny_model


def _patch(model: torch.nn.Module, scale: float = 1e-3, layers: tuple[int, ...] = (1, 2)) -> WeightPatch:
    generator = torch.Generator().manual_seed(0)
    deltas = {}
    for layer in layers:
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        deltas[name] = scale * torch.randn(model.get_parameter(name).shape, generator=generator)
    return WeightPatch(
        deltas,
        {
            "editor": "test",
            "base_fingerprint": model_fingerprint(model),
            "layers": list(layers),
            "request_ids": ["a", "b"],
        },
    )


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_changes_only_patched_parameters_and_revert_is_bit_identical(dtype: torch.dtype) -> None:
    model = tiny_model("llama", dtype=dtype)
    before = _state(model)
    patch = _patch(model)
    patch.apply(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(patch.deltas)
    name = "model.layers.1.mlp.down_proj.weight"
    expected = (before[name].float() + patch.deltas[name]).to(dtype)
    assert torch.equal(after[name], expected)
    patch.revert(model)
    assert _identical(before, model.state_dict())


def test_save_load_round_trip_gives_bit_identical_weights(tmp_path) -> None:
    model = tiny_model("llama")
    patch = _patch(model)
    patch.save(tmp_path / "patch")
    assert sorted(p.name for p in (tmp_path / "patch").iterdir()) == ["deltas.safetensors", "manifest.json"]
    loaded = WeightPatch.load(tmp_path / "patch")
    assert loaded.patch_id == patch.patch_id
    assert loaded.layers == [1, 2] and loaded.request_ids == ["a", "b"]
    assert loaded.base_fingerprint == patch.base_fingerprint
    twin = tiny_model("llama")
    patch.apply(model)
    loaded.apply(twin)
    assert _identical(model.state_dict(), twin.state_dict())


def test_patch_id_is_a_content_hash(tmp_path) -> None:
    model = tiny_model("llama")
    a, b = _patch(model), _patch(model)
    assert a.patch_id == b.patch_id
    assert _patch(model, scale=2e-3).patch_id != a.patch_id
    a.save(tmp_path / "p")
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    manifest["base_fingerprint"] = "0" * 32
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="do not match"):
        WeightPatch.load(tmp_path / "p")


def test_apply_to_another_model_is_refused_unless_unchecked() -> None:
    model, other = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    patch = _patch(model)
    before = _state(other)
    with pytest.raises(PatchMismatchError, match="fingerprint"):
        patch.apply(other)
    assert _identical(before, other.state_dict())
    patch.apply(other, check=False)
    patch.revert(other)
    assert _identical(before, other.state_dict())


def test_misuse_gives_clear_errors(tmp_path) -> None:
    model = tiny_model("llama")
    patch = _patch(model)
    with pytest.raises(RuntimeError, match="not applied"):
        patch.revert(model)
    patch.apply(model)
    with pytest.raises(RuntimeError, match="already applied"):
        patch.apply(model)
    with pytest.raises(FileNotFoundError, match="missing"):
        WeightPatch.load(tmp_path)
    bad = WeightPatch({"model.layers.9.mlp.down_proj.weight": torch.zeros(32, 64)}, {})
    with pytest.raises(PatchMismatchError, match="no parameter"):
        bad.apply(tiny_model("llama"))
