"""ArchSpec registry on tiny random models of every supported family."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig
from transformers.models.gemma3 import Gemma3TextConfig

from editdecay.models import (
    KNOWN_MODELS,
    ArchSpec,
    UnsupportedArchitectureError,
    arch_for,
    block,
    check_layers,
    default_edit_layers,
    edit_matrix,
    embeddings_tied,
    final_norm,
    get_module,
    mlp_out,
    num_blocks,
    register_arch,
    supported_model_types,
    unembedding,
)
from editdecay.models import arch as arch_module
from editdecay.models.hooks import record
from tiny import ARCHES, tiny_config, tiny_model

SPEC_NAME = {"gpt2": "gpt2", "gptj": "gptj", "gpt_neox": "gpt_neox", "llama": "llama", "gemma3": "gemma"}
# MLP inner width m of the tiny configs (GPT-2 and GPT-J default to 4 x d).
INNER = {"gpt2": 128, "gptj": 128, "gpt_neox": 64, "llama": 64, "gemma3": 64}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {arch: tiny_model(arch, seed=1) for arch in ARCHES}


@pytest.fixture
def restore_registry():
    saved = list(arch_module._REGISTRY)
    yield
    arch_module._REGISTRY[:] = saved


@pytest.mark.parametrize("arch", ARCHES)
def test_spec_and_block_count(models, arch):
    model = models[arch]
    spec = arch_for(model)
    assert spec.name == SPEC_NAME[arch]
    assert model.config.model_type in spec.model_types
    assert arch_for(model.config.model_type) is spec
    assert num_blocks(model) == 4
    for layer in range(4):
        assert block(model, layer) is get_module(model, spec.block_path(layer))
        assert mlp_out(model, layer) is get_module(model, spec.mlp_out_path(layer))
        assert mlp_out_weight_is(model, spec, layer)


def mlp_out_weight_is(model: nn.Module, spec: ArchSpec, layer: int) -> bool:
    return dict(model.named_parameters())[spec.mlp_out_weight_name(layer)] is mlp_out(model, layer).weight


@pytest.mark.parametrize("arch", ARCHES)
def test_edit_matrix_orientation(models, arch):
    model = models[arch]
    d = model.config.hidden_size
    for layer in range(num_blocks(model)):
        module = mlp_out(model, layer)
        w = edit_matrix(model, layer)
        assert w.shape == (d, INNER[arch])
        keys = torch.randn(7, INNER[arch], generator=torch.Generator().manual_seed(layer))
        bias = module.bias if getattr(module, "bias", None) is not None else torch.zeros(d)
        with torch.no_grad():
            torch.testing.assert_close(module(keys) - bias, keys @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_edit_matrix_is_a_view_that_writes_through(arch):
    model = tiny_model(arch, seed=2)
    module = mlp_out(model, 1)
    key = torch.randn(INNER[arch])
    delta = torch.randn(model.config.hidden_size, INNER[arch]) * 0.1
    with torch.no_grad():
        before = module(key)
        edit_matrix(model, 1).add_(delta)  # what an editor does: W <- W + Delta
        after = module(key)
    torch.testing.assert_close(after - before, delta @ key, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHES)
def test_final_norm_and_unembedding_reproduce_logits(models, arch):
    model = models[arch]
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    last_block = arch_for(model).block_path(num_blocks(model) - 1)
    with torch.no_grad(), record(model, [last_block]) as seen:
        out = model(input_ids=ids, output_hidden_states=True)
        logits = unembedding(model)(final_norm(model)(seen[last_block]))
    torch.testing.assert_close(final_norm(model)(seen[last_block]), out.hidden_states[-1])
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHES)
def test_tied_embeddings(models, arch):
    model = models[arch]
    tied = unembedding(model).weight is model.get_input_embeddings().weight
    assert embeddings_tied(model) == tied
    assert tied == bool(model.config.tie_word_embeddings)


def test_tied_and_untied_families():
    assert embeddings_tied(tiny_model("llama"))
    assert not embeddings_tied(tiny_model("gptj"))
    config = tiny_config("llama")
    config.tie_word_embeddings = False
    untied = AutoModelForCausalLM.from_config(config)
    assert not embeddings_tied(untied)
    assert unembedding(untied).weight is not untied.get_input_embeddings().weight


@pytest.mark.parametrize("arch", ARCHES)
def test_block_module_short_names_resolve(models, arch):
    model = models[arch]
    spec = arch_for(model)
    assert {"q", "k", "v", "o", "up", "down"} <= set(spec.block_modules)
    for layer in range(num_blocks(model)):
        for short, path in spec.block_modules.items():
            module = block(model, layer).get_submodule(path)
            assert hasattr(module, "weight"), (arch, short, path)
        down = block(model, layer).get_submodule(spec.block_modules["down"])
        assert down is mlp_out(model, layer)
    if spec.name == "llama":
        assert "gate" in spec.block_modules


def _meta_model(config) -> nn.Module:
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def test_default_edit_layers_known_and_fallback(models):
    assert default_edit_layers(models["llama"]) == (0, 1, 2, 3)  # 4 blocks: all of them
    smollm2_shape = LlamaConfig(
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        vocab_size=64,
    )
    gemma_shape = Gemma3TextConfig(
        hidden_size=640,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        intermediate_size=2048,
        vocab_size=64,
    )
    gpt2_xl_shape = GPT2Config(n_embd=1600, n_layer=48, n_head=25, vocab_size=64)
    known = {k.label: k for k in KNOWN_MODELS}
    assert default_edit_layers(_meta_model(smollm2_shape)) == known["smollm2-135m"].edit_layers
    assert default_edit_layers(_meta_model(gemma_shape)) == known["gemma3-270m"].edit_layers
    assert default_edit_layers(_meta_model(gpt2_xl_shape)) == (13, 14, 15, 16, 17)
    unknown = LlamaConfig(
        hidden_size=64, num_hidden_layers=16, num_attention_heads=4, intermediate_size=128, vocab_size=64
    )
    assert default_edit_layers(_meta_model(unknown)) == (2, 3, 4, 5, 6)  # five blocks from depth/8
    for entry in KNOWN_MODELS:
        assert len(entry.edit_layers) >= 5 and max(entry.edit_layers) < entry.num_layers
        assert list(entry.edit_layers) == list(range(entry.edit_layers[0], entry.edit_layers[-1] + 1))
        assert entry.how_chosen


def test_unsupported_architecture_message():
    with pytest.raises(UnsupportedArchitectureError) as err:
        arch_for("bert")
    message = str(err.value)
    assert "'bert'" in message
    for model_type in ("gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "gemma3_text"):
        assert model_type in message
    assert "register_arch" in message and "ArchSpec" in message
    with pytest.raises(UnsupportedArchitectureError, match="has no `config`"):
        arch_for(nn.Linear(2, 2))


class _ToyConfig:
    model_type = "toy"
    hidden_size = 6


class _ToyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ff = nn.ModuleDict({"inp": nn.Linear(6, 10), "out": nn.Linear(10, 6)})


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = _ToyConfig()
        self.net = nn.Module()
        self.net.blocks = nn.ModuleList(_ToyBlock() for _ in range(3))
        self.net.norm = nn.LayerNorm(6)


@pytest.mark.usefixtures("restore_registry")
def test_register_arch_adds_a_family():
    toy = _Toy()
    with pytest.raises(UnsupportedArchitectureError):
        arch_for(toy)
    spec = ArchSpec(
        name="toy",
        model_types=("toy",),
        blocks_path="net.blocks",
        mlp_out_template="net.blocks.{}.ff.out",
        final_norm_path="net.norm",
        block_modules={"up": "ff.inp", "down": "ff.out"},
    )
    register_arch(spec)
    assert arch_for(toy) is spec
    assert "toy" in supported_model_types()
    assert num_blocks(toy) == 3
    assert mlp_out(toy, 2) is toy.net.blocks[2].ff["out"]
    assert edit_matrix(toy, 2).shape == (6, 10)
    assert final_norm(toy) is toy.net.norm
    assert default_edit_layers(toy) == (0, 1, 2)
    with pytest.raises(ValueError, match="needs '\\{\\}'"):
        register_arch(
            ArchSpec(name="bad", model_types=("bad",), blocks_path="a", mlp_out_template="a.0.b", final_norm_path="n")
        )


@pytest.mark.usefixtures("restore_registry")
def test_register_arch_takes_over_only_its_own_model_types():
    llama = arch_for("llama")
    mistral = ArchSpec(
        name="my-mistral",
        model_types=("mistral",),
        blocks_path="model.layers",
        mlp_out_template="model.layers.{}.mlp.down_proj",
        final_norm_path="model.norm",
    )
    register_arch(mistral)
    assert arch_for("mistral") is mistral
    assert arch_for("llama").name == "llama" and arch_for("qwen2").name == "llama"
    assert "mistral" not in arch_for("llama").model_types
    assert supported_model_types().count("mistral") == 1
    assert llama.model_types != arch_for("llama").model_types


def test_arch_spec_is_hashable():
    assert len({arch_for("llama"), arch_for("gpt2"), arch_for("llama")}) == 2


def test_check_layers(models):
    model = models["gptj"]
    check_layers(model, [0, 3])
    expected = r"Layers \[4, -1\] are outside the model: it has 4 blocks \(valid indices 0..3\)"
    with pytest.raises(ValueError, match=expected):
        check_layers(model, [1, 4, -1])
    with pytest.raises(TypeError, match="integers"):
        check_layers(model, [1.0])
    with pytest.raises(ValueError, match="outside"):
        mlp_out(model, 4)
    with pytest.raises(ValueError, match="outside"):
        block(model, 7)
