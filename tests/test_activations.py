"""Activation drift and directional similarity: zero drift for identical models, cos(d, d) = 1, values
equal to a direct per-prompt computation under left and right padding, subject positions, probe prompts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from editdecay.data import EditRequest, TaskItem
from editdecay.data.tasks import alpaca_prompt
from editdecay.evaluation import ProbePrompt, activation_shift, probe_prompts
from editdecay.evaluation.batching import encode
from editdecay.models import arch_for, num_blocks
from editdecay.models.hooks import record
from tiny import bos_for, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = [
    "The capital of France is",
    "Michael Jordan plays",
    "Toyota is headquartered in the city of",
    "Below is an instruction that describes a task.",
]


def _nudged(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return other


def _by_pair(table) -> dict[str, np.ndarray]:
    return {pair: rows.sort_values("layer") for pair, rows in table.groupby("pair")}


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_identical_models_have_zero_drift(arch: str) -> None:
    model = tiny_model(arch)
    table = activation_shift(
        {"M": model, "Med": copy.deepcopy(model), "Mft": model},
        tiny_tokenizer(bos_for(arch)),
        PROMPTS,
        batch_size=3,
        progress=False,
    )
    assert set(table["pair"]) == {"Med-M", "Mft-M", "cos(Med-M, Mft-M)"}
    assert (table.loc[table["pair"] != "cos(Med-M, Mft-M)", "drift"] == 0).all()
    # Both differences are zero vectors: 0 / (0 + eps) = 0, not NaN.
    assert (table.loc[table["pair"] == "cos(Med-M, Mft-M)", "similarity"] == 0).all()
    assert len(table) == 3 * num_blocks(model) and (table["n_prompts"] == 4).all()


def test_cosine_of_a_direction_with_itself_is_one() -> None:
    base = tiny_model("llama")
    edited = _nudged(base, seed=1)
    table = activation_shift(
        {"M": base, "Med": edited, "Mft": base, "Med_ft": edited}, tiny_tokenizer(True), PROMPTS, progress=False
    )
    pairs = _by_pair(table)
    np.testing.assert_allclose(pairs["cos(Med_ft-Mft, Med-M)"]["similarity"], 1.0, atol=1e-6)
    np.testing.assert_allclose(pairs["Med_ft-Mft"]["drift"], pairs["Med-M"]["drift"].to_numpy())
    assert (pairs["Med_ft-Med"]["drift"] == 0).all() and (pairs["Med-M"]["drift"] > 0).all()


def _direct(models: dict[str, torch.nn.Module], tokenizer, prompts: list[str], index_of) -> dict[str, np.ndarray]:
    """Block outputs of each unpadded prompt at the chosen token, straight from forward hooks."""
    states = {}
    for group, model in models.items():
        names = [arch_for(model).block_path(i) for i in range(num_blocks(model))]
        rows = []
        for prompt in prompts:
            ids = list(encode(tokenizer, [prompt], specials=True)[0])
            with torch.no_grad(), record(model, names) as out:
                model(input_ids=torch.tensor([ids]))
            rows.append(torch.stack([out[name][0, index_of(prompt, ids)] for name in names]).double())
        states[group] = torch.stack(rows)  # (prompts, layers, d)
    return states


@pytest.mark.parametrize("side", ["left", "right"])
def test_values_match_direct_computation(side: str) -> None:
    base = tiny_model("gemma3")
    models = {"M": base, "Med": _nudged(base, 1), "Mft": _nudged(base, 2), "Med_ft": _nudged(base, 3)}
    tokenizer = tiny_tokenizer(add_bos=True, padding_side=side)
    table = activation_shift(models, tokenizer, PROMPTS, batch_size=3, progress=False)
    h = _direct(models, tokenizer, PROMPTS, lambda _prompt, ids: len(ids) - 1)
    pairs = _by_pair(table)
    expected_drift = (h["Med_ft"] - h["Med"]).norm(dim=-1).mean(dim=0).numpy()
    np.testing.assert_allclose(pairs["Med_ft-Med"]["drift"], expected_drift, rtol=1e-4)
    d1, d2 = h["Med"] - h["M"], h["Mft"] - h["M"]
    cosine = ((d1 * d2).sum(-1) / (d1.norm(dim=-1) * d2.norm(dim=-1) + 1e-8)).mean(dim=0).numpy()
    np.testing.assert_allclose(pairs["cos(Med-M, Mft-M)"]["similarity"], cosine, atol=1e-4)
    assert (table["position"] == "last").all()


def test_subject_position() -> None:
    base = tiny_model("llama")
    models = {"M": base, "Med": _nudged(base, 1)}
    tokenizer = tiny_tokenizer(add_bos=True, padding_side="left")
    prompt = "The capital of France is"
    probes = [ProbePrompt(prompt, "edit", prompt.index("France") + len("France")), ProbePrompt("no subject here")]
    table = activation_shift(models, tokenizer, probes, position="subject", progress=False)
    subject_index = len(encode(tokenizer, ["The capital of France"], specials=True)[0]) - 1
    h = _direct(
        models, tokenizer, [prompt, "no subject here"], lambda p, ids: subject_index if p == prompt else len(ids) - 1
    )
    expected = (h["Med"] - h["M"]).norm(dim=-1).mean(dim=0).numpy()
    np.testing.assert_allclose(table.sort_values("layer")["drift"], expected, rtol=1e-4)
    assert (table["n_subject"] == 1).all() and (table["position"] == "subject").all()
    last = activation_shift(models, tokenizer, probes, position="last", progress=False)
    assert not np.allclose(last.sort_values("layer")["drift"], expected)


def test_subsets_and_errors() -> None:
    base = tiny_model("llama")
    tokenizer = tiny_tokenizer()
    table = activation_shift({"Med": _nudged(base, 1), "Med_ft": base}, tokenizer, PROMPTS[:2], progress=False)
    assert set(table["pair"]) == {"Med_ft-Med"} and table["similarity"].isna().all()
    with pytest.raises(ValueError, match="at least a pair"):
        activation_shift({"M": base}, tokenizer, PROMPTS, progress=False)
    with pytest.raises(ValueError, match="no prompts"):
        activation_shift({"M": base, "Med": base}, tokenizer, [], progress=False)


def test_probe_prompts_and_sources() -> None:
    requests = [
        EditRequest(str(i), s, "In {{braces}}, {} lives in", "Rome", "Paris", (f"{s} resides in",))
        for i, s in enumerate(["Anna", "Ben", "Carla"])
    ]
    items = [
        TaskItem(task, f"{task}-{i}", f"{task} question {i}", "", "true", ("true", "false"), ("true", "false"), "q")
        for task in ("boolq", "piqa")
        for i in range(3)
    ]
    prompts = probe_prompts(requests, items, limit=4)
    edit = [p for p in prompts if p.source == "edit"]
    downstream = [p for p in prompts if p.source == "downstream"]
    assert [p.text for p in edit] == [
        "In {braces}, Anna lives in",
        "Anna resides in",
        "In {braces}, Ben lives in",
        "Ben resides in",
    ]
    assert edit[0].text[: edit[0].subject_end].endswith("Anna") and edit[1].subject_end == len("Anna")
    assert [p.text for p in downstream] == [
        alpaca_prompt(f"{t} question {i}") for i, t in [(0, "boolq"), (0, "piqa"), (1, "boolq"), (1, "piqa")]
    ]
    base = tiny_model("llama")
    table = activation_shift(
        {"M": base, "Med": _nudged(base, 1)}, tiny_tokenizer(), prompts, by_source=True, progress=False
    )
    counts = table.groupby("prompt_set")["n_prompts"].first().to_dict()
    assert counts == {"all": 8, "edit": 4, "downstream": 4}
    all_rows = table[table["prompt_set"] == "all"].set_index("layer")["drift"]
    parts = table[table["prompt_set"] != "all"].groupby("layer")["drift"].mean()  # equal-sized sources
    np.testing.assert_allclose(all_rows.sort_index(), parts.sort_index())
