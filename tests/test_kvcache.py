"""Every forward pass that passes or reads a KV cache uses the installed transformers' keyword (5.24 renamed
`past_key_values` to `cache`; the old name warns until 5.40), so none of them warns."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from editdecay.editing.sampled_text import sample_sequences
from editdecay.editing.target_values import TargetSettings, compute_targets
from editdecay.evaluation import score_edits
from editdecay.evaluation.batching import beam_generate, encode, greedy_generate
from editdecay.models.kvcache import CACHE_ARG, cache_kwargs, output_cache
from test_edit_support import capital_requests
from tiny import bos_for, tiny_model, tiny_tokenizer

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("error::FutureWarning"),
    pytest.mark.filterwarnings("error::DeprecationWarning:transformers"),
]

ARCHES = ["llama", "gemma3", "gpt2"]


@pytest.mark.parametrize("arch", ARCHES)
def test_the_cache_keyword_is_the_one_the_models_take(arch: str) -> None:
    model = tiny_model(arch)
    assert CACHE_ARG in inspect.signature(type(model).forward).parameters
    assert CACHE_ARG in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        first = model(input_ids=ids, use_cache=True)
        step = model(input_ids=torch.tensor([[6]]), **cache_kwargs(output_cache(first)), use_cache=True)
        full = model(input_ids=torch.tensor([[3, 4, 5, 6]]))
    assert output_cache(step).get_seq_length() == 4
    torch.testing.assert_close(step.logits[0, -1], full.logits[0, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHES)
def test_cached_passes_do_not_warn(arch: str) -> None:
    model, tok = tiny_model(arch, seed=1), tiny_tokenizer(add_bos=bos_for(arch), padding_side="left")
    contexts = encode(tok, ["The capital of France is", "Rome is in"], specials=True)
    assert [len(g) for g in greedy_generate(model, 0, contexts, 3, progress=False)] == [3, 3]
    beam_generate(model, 0, contexts, 2, num_beams=2, progress=False)
    score_edits(model, tok, capital_requests(2), progress=False)  # greedy answers continue from the caches
    assert [len(s) for s in sample_sequences(model, tok, 8, length=4, seed=0)] == [4, 4]
    # Target optimisation in suffix mode replays the prompt from its cached keys/values (Gemma's tiny sliding
    # window is too short for it).
    mode = "full" if arch == "gemma3" else "suffix"
    result = compute_targets(
        model, tok, capital_requests(1), ["{}"], TargetSettings(z_layer=1, steps=2), mode=mode, progress=False
    )
    assert result.modes == [mode]
