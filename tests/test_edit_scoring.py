"""Edit scoring: exact values on hand-made log-probabilities, batched == one-at-a-time, padding/BOS handling."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from editdecay.data import EditRequest, LocalityPrompt
from editdecay.evaluation import (
    edit_metrics,
    neighborhood_agreement,
    score_edits,
    success_flags,
    summarize_edit_metrics,
)
from editdecay.evaluation.batching import TokenScores, encode, greedy_generate, score_continuations
from editdecay.evaluation.generation_success import GENERATION_EXTRA_TOKENS, contains_answer, generation_flags
from editdecay.models.kvcache import CACHE_ARG
from tiny import bos_for, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


class BigramLM(nn.Module):
    """A causal LM whose next-token log-probabilities depend only on the previous token: table[prev]."""

    def __init__(self, logprobs: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(logprobs, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, **_kwargs):
        logits = self.table[input_ids]
        if isinstance(logits_to_keep, torch.Tensor):
            logits = torch.take_along_dim(logits, logits_to_keep[..., None], dim=1)
        elif logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, **{CACHE_ARG: _Unused()})


class _Unused:
    """The bigram model needs no cache: its logits at a position depend only on that position's token."""

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        pass


def _bigram() -> tuple[BigramLM, np.ndarray]:
    # Tokens 0..5 (0 = pad). After token 2, tokens 3 and 4 tie (0.4 each); argmax breaks ties to the first.
    p = np.full((6, 6), 0.02)
    p[2] = [0.02, 0.06, 0.06, 0.4, 0.4, 0.06]
    p[4] = [0.02, 0.02, 0.02, 0.02, 0.02, 0.9]
    p[3] = [0.02, 0.7, 0.2, 0.04, 0.02, 0.02]
    p /= p.sum(axis=1, keepdims=True)
    return BigramLM(torch.tensor(np.log(p), dtype=torch.float32)), p


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_continuation_scores_exact_on_handmade_logprobs(batch_size: int) -> None:
    model, p = _bigram()
    pairs = [((1, 2), (3,)), ((1, 2), (4, 5)), ((5, 1, 2), (4, 5)), ((2,), (3, 1))]
    scores, answers = score_continuations(
        model, 0, pairs, greedy={(1, 2): 3, (2,): 1}, batch_size=batch_size, progress=False
    )
    single_token, two_token, longer_context, last = scores
    assert single_token.logprobs == pytest.approx((math.log(p[2, 3]),), abs=1e-6)
    assert single_token.argmax == (3,) and single_token.exact and single_token.token_accuracy == 1.0
    # Multi-token target: mean per-token NLL; position 0 is a tie (3 vs 4) that argmax resolves to 3.
    assert two_token.logprobs == pytest.approx((math.log(p[2, 4]), math.log(p[4, 5])), abs=1e-6)
    assert two_token.nll == pytest.approx(-(math.log(p[2, 4]) + math.log(p[4, 5])) / 2, abs=1e-6)
    assert two_token.argmax == (3, 5) and two_token.token_accuracy == 0.5 and not two_token.exact
    assert longer_context.logprobs == pytest.approx(two_token.logprobs, abs=1e-6)
    assert last.argmax == (3, 1) and last.exact
    # Greedy answers continue from the contexts' caches: 2 -> 3 (tie resolved to the first), 3 -> 1,
    # 1 -> 0 (a uniform row: the first index); a fresh prefill (greedy_generate) agrees.
    assert answers == {(1, 2): (3, 1, 0), (2,): (3,)}
    assert greedy_generate(model, 0, [(1, 2), (2,)], [3, 1], batch_size=batch_size, progress=False) == [(3, 1, 0), (3,)]
    with pytest.raises(ValueError, match="no continuation to score"):
        score_continuations(model, 0, pairs, greedy={(7,): 1}, progress=False)


def test_token_scores_properties() -> None:
    scores = TokenScores((5, 6, 7), (-1.0, -2.0, -3.0), (5, 9, 7))
    assert scores.sum_logprob == -6.0 and scores.nll == 2.0
    assert scores.token_accuracy == pytest.approx(2 / 3) and not scores.exact


def _row(
    case: str,
    kind: str,
    nll_new: float,
    nll_true: float | None,
    *,
    family: str = "counterfact",
    exact_new: bool = False,
    exact_true: bool | None = False,
    acc_new: float = 0.0,
    acc_true: float = 0.0,
    greedy: str = " x",
    generation: str | None = None,
    index: int = 0,
) -> dict:
    return {
        "case_id": case,
        "kind": kind,
        "prompt_index": index,
        "metric_family": family,
        "target_new": "N",
        "target_true": None if nll_true is None else "T",
        "nll_new": nll_new,
        "nll_true": math.nan if nll_true is None else nll_true,
        "prob_new": math.exp(-nll_new),
        "prob_true": math.nan if nll_true is None else math.exp(-nll_true),
        "exact_new": exact_new,
        "exact_true": exact_true,
        "token_acc_new": acc_new,
        "token_acc_true": acc_true,
        "greedy": greedy,
        "generation": greedy if generation is None else generation,
    }


def _flagged(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    table["success"] = success_flags(table)
    return pd.concat([table, generation_flags(table)], axis=1)


def _handmade_counterfact() -> pd.DataFrame:
    rows = [
        _row("a", "rewrite", 1.0, 2.0, exact_new=True, greedy=" N"),  # success
        _row("a", "paraphrase", 2.0, 2.0, index=0),  # tie: failure
        _row("a", "paraphrase", 0.5, 3.0, index=1),  # success
        _row("a", "neighborhood", 1.0, 0.5, exact_true=True),  # true wins: success
        _row("a", "neighborhood", 1.0, 1.0, index=1),  # tie: failure
        _row("b", "rewrite", 3.0, 1.0, greedy=" T"),  # failure; no paraphrases
        _row("b", "neighborhood", 2.0, 1.0),
    ]
    return _flagged(rows)


def test_success_rule_and_per_edit_metrics_exact() -> None:
    table = _handmade_counterfact()
    assert table["success"].tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    per_edit = edit_metrics(table).set_index("case_id")
    a, b = per_edit.loc["a"], per_edit.loc["b"]
    assert (a.es, a.ps, a.ns) == (1.0, 0.5, 0.5)
    assert (b.es, b.ns) == (0.0, 1.0) and math.isnan(b.ps)  # empty paraphrase list -> NaN, not 0
    e = math.exp
    assert a.es_magnitude == pytest.approx(e(-1) - e(-2))
    assert a.ps_magnitude == pytest.approx(((e(-2) - e(-2)) + (e(-0.5) - e(-3))) / 2)
    assert a.ns_magnitude == pytest.approx(((e(-0.5) - e(-1)) + 0.0) / 2)
    assert (a.es_accuracy, a.ps_accuracy, a.ns_accuracy) == (1.0, 0.0, 0.5)
    assert (a.success, b.success) == (1.0, 0.0)
    assert (a.knows_true, b.knows_true) == (0.0, 1.0)
    assert (a.answer, b.answer) == (" N", " T")
    assert (a.n_paraphrase, b.n_paraphrase, a.n_neighborhood) == (2, 0, 2)

    summary = summarize_edit_metrics(edit_metrics(table))
    assert summary["es"] == 50.0 and summary["ps"] == 50.0 and summary["ns"] == 75.0
    assert summary["n_edits"] == 2 and "es" in summary["metric_definitions"]


def test_zsre_rule_is_token_accuracy_and_neighborhood_uses_loc_answer() -> None:
    rows = [
        _row("z", "rewrite", 0.3, None, family="zsre", acc_new=2 / 3),
        _row("z", "paraphrase", 0.3, None, family="zsre", acc_new=1.0, exact_new=True),
        _row("z", "neighborhood", 0.3, 0.9, family="zsre", acc_true=0.25, acc_new=1.0),
    ]
    rows[2]["target_true"] = "loc answer"
    table = _flagged(rows)
    assert table["success"].tolist() == pytest.approx([2 / 3, 1.0, 0.25])
    metrics = edit_metrics(table).iloc[0]
    assert metrics.es == pytest.approx(2 / 3) and metrics.ps == 1.0 and metrics.ns == 0.25
    assert metrics.success == 0.0  # not every token of the answer is right
    assert math.isnan(metrics.es_magnitude) and math.isnan(metrics.ns_magnitude)


def test_generation_success_on_handmade_generations() -> None:
    """§12 by hand: whole-word, case-insensitive matches in the generated text; counterfact neighborhoods succeed
    when the new target is absent, zsRE neighborhoods when the loc answer is present."""
    rows = [
        _row("a", "rewrite", 5.0, 1.0, generation=" N is the answer"),  # says N although T is preferred
        _row("a", "paraphrase", 1.0, 2.0, generation=" T, not n.", index=0),  # both appear
        _row("a", "paraphrase", 1.0, 2.0, generation=" Tx Nx", index=1),  # neither as a whole word
        _row("a", "neighborhood", 1.0, 0.5, generation=" T"),  # no spill-over
        _row("a", "neighborhood", 1.0, 0.5, generation=" ... N", index=1),  # spill-over
        _row("b", "rewrite", 1.0, 2.0, generation=" T"),  # prefers N but says T
    ]
    table = _flagged(rows)
    assert table["gen_new"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert table["gen_true"].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert table["gen_success"].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    per_edit = edit_metrics(table).set_index("case_id")
    a, b = per_edit.loc["a"], per_edit.loc["b"]
    assert (a.gen_es, a.gen_ps, a.gen_ns, a.gen_es_true, a.gen_ps_true, a.gen_success) == (1, 0.5, 0.5, 0, 0.5, 1)
    assert (a.es, b.es) == (0.0, 1.0)  # the probability family disagrees with the text on both edits
    assert (b.gen_es, b.gen_es_true, b.gen_success) == (0.0, 1.0, 0.0) and math.isnan(b.gen_ps)
    summary = summarize_edit_metrics(edit_metrics(table))
    assert (summary["gen_es"], summary["gen_success"], summary["gen_ns"]) == (50.0, 50.0, 50.0)
    assert "gen_es" in summary["metric_definitions"] and "es" in summary["metric_definitions"]

    zsre = _flagged(
        [
            _row("z", "rewrite", 0.3, None, family="zsre", generation=" N"),
            _row("z", "neighborhood", 0.3, 0.9, family="zsre", generation=" the loc answer!"),
        ]
    )
    assert zsre.loc[1, "gen_success"] == 0.0  # _row's target_true is "T"; the loc answer below makes it 1
    zsre.loc[1, "target_true"] = "loc answer"
    assert generation_flags(zsre)["gen_success"].tolist() == [1.0, 1.0]


def test_contains_answer_needs_whole_words() -> None:
    assert contains_answer(" Banana, of course", "banana") and contains_answer("New  York City", "new york")
    assert not contains_answer(" bananas", "banana") and not contains_answer("", "banana")
    assert not contains_answer("anything", "  ")  # an empty answer never matches


def test_summary_rejects_mixed_families() -> None:
    table = pd.concat(
        [_handmade_counterfact(), _flagged([_row("z", "rewrite", 0.3, None, family="zsre", acc_new=1.0)])]
    )
    with pytest.raises(ValueError, match="one metric family"):
        summarize_edit_metrics(edit_metrics(table))


def test_neighborhood_agreement_counts_matching_argmax_positions() -> None:
    def table(argmax: list[list[int]]) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "case_id": "z",
                    "kind": "neighborhood",
                    "prompt_index": i,
                    "target_true_ids": [1, 2],
                    "argmax_true_ids": a,
                }
                for i, a in enumerate(argmax)
            ]
            + [{"case_id": "y", "kind": "rewrite", "prompt_index": 0, "target_true_ids": [], "argmax_true_ids": []}]
        )

    agreement = neighborhood_agreement(table([[1, 5], [7, 7]]), table([[1, 2], [7, 7]]))
    assert agreement.set_index("case_id")["ns_agreement"].loc["z"] == pytest.approx((0.5 + 1.0) / 2)
    assert math.isnan(agreement.set_index("case_id")["ns_agreement"].loc["y"])


REQUESTS = [
    EditRequest(
        "0",
        "France",
        "The capital of {} is",
        "Rome",
        "Paris",
        ("France's capital city is",),
        (LocalityPrompt("The capital of Italy is", "Rome"),),
    ),
    EditRequest(
        "1",
        "Spain",
        "The capital of {} is",
        " Berlin London",
        "Madrid",
        (),
        (LocalityPrompt("The capital of Germany is", "Berlin"), LocalityPrompt("Toyota is based in", "Tokyo")),
    ),
    EditRequest(
        "2",
        "Lionel Messi",
        "{} plays",
        "basketball",
        "soccer",
        ("The sport of Lionel Messi is", "Lionel Messi is a professional"),
        (),
    ),
    EditRequest(
        "3",
        "Danielle Darrieux",
        "The mother tongue of {} is",
        "English",
        None,
        ("Danielle Darrieux speaks",),
        (LocalityPrompt("Thomas Joannes Stieltjes speaks", "Dutch"),),
        metric_family="zsre",
    ),
]


def _reference(model: nn.Module, tokenizer, prompt: str, target: str) -> tuple[list[float], list[int]]:
    """Unpadded single-sequence teacher forcing with full logits: the naive definition."""
    context = encode(tokenizer, [prompt], specials=True)[0]
    target_ids = encode(tokenizer, [target if target.startswith(" ") else " " + target], specials=False)[0]
    ids = torch.tensor([list(context) + list(target_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    positions = range(len(context) - 1, len(context) - 1 + len(target_ids))
    return (
        [float(logp[p, t]) for p, t in zip(positions, target_ids, strict=True)],
        [int(logp[p].argmax()) for p in positions],
    )


def _reference_greedy(model: nn.Module, tokenizer, prompt: str, n: int) -> list[int]:
    ids = list(encode(tokenizer, [prompt], specials=True)[0])
    out = []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(token)
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_single_and_reference(arch: str, side: str) -> None:
    model = tiny_model(arch, seed=3)
    tokenizer = tiny_tokenizer(add_bos=bos_for(arch), padding_side=side)
    batched = score_edits(model, tokenizer, REQUESTS, batch_size=16, progress=False)
    single = score_edits(model, tokenizer, REQUESTS, batch_size=1, progress=False)
    numeric = ["nll_new", "nll_true", "token_acc_new", "token_acc_true", "success"]
    np.testing.assert_allclose(batched[numeric].to_numpy(float), single[numeric].to_numpy(float), atol=1e-5)
    assert batched["greedy"].tolist() == single["greedy"].tolist()
    assert batched["argmax_new_ids"].map(list).tolist() == single["argmax_new_ids"].map(list).tolist()

    # Rows: per request, rewrite + paraphrases + neighborhood prompts.
    assert len(batched) == sum(1 + len(r.paraphrase_prompts) + len(r.neighborhood) for r in REQUESTS)
    if side == "right":
        return  # the reference below does not depend on padding
    for row in batched.itertuples():
        logprobs, argmax = _reference(model, tokenizer, row.prompt, row.target_new)
        assert row.nll_new == pytest.approx(-sum(logprobs) / len(logprobs), abs=1e-5)
        assert list(row.argmax_new_ids) == argmax
        if isinstance(row.target_true, str):
            true_logprobs, _ = _reference(model, tokenizer, row.prompt, row.target_true)
            assert row.nll_true == pytest.approx(-sum(true_logprobs) / len(true_logprobs), abs=1e-5)
        n = max(row.n_tokens_new, row.n_tokens_true)
        reference = _reference_greedy(model, tokenizer, row.prompt, n + GENERATION_EXTRA_TOKENS)
        assert list(row.greedy_ids) == reference[:n] and list(row.generation_ids) == reference
        assert row.generation == tokenizer.decode(reference, skip_special_tokens=True)
        assert row.gen_new == float(contains_answer(row.generation, row.target_new))


def test_without_generation_the_probability_family_is_unchanged() -> None:
    model, tokenizer = tiny_model("llama", seed=2), tiny_tokenizer(add_bos=True)
    full = score_edits(model, tokenizer, REQUESTS, progress=False)
    lean = score_edits(model, tokenizer, REQUESTS, progress=False, generation=False)
    assert not {"generation", "generation_ids", "gen_new", "gen_success"} & set(lean.columns)
    pd.testing.assert_frame_equal(lean, full[list(lean.columns)])
    per_edit = edit_metrics(lean)
    counterfact = per_edit[per_edit["metric_family"] == "counterfact"]
    assert "gen_es" not in per_edit.columns and summarize_edit_metrics(counterfact)["es"] is not None


def test_rows_targets_and_families() -> None:
    model, tokenizer = tiny_model("llama", seed=1), tiny_tokenizer(add_bos=True)
    table = score_edits(model, tokenizer, REQUESTS, progress=False)
    spain = table[table["case_id"] == "1"]
    assert spain["kind"].tolist() == ["rewrite", "neighborhood", "neighborhood"]
    assert spain["target_true"].tolist() == ["Madrid", "Berlin", "Tokyo"]  # neighborhood: its own answer
    zsre = table[table["case_id"] == "3"]
    assert zsre["nll_true"].iloc[:2].isna().all() and zsre["target_true"].iloc[2] == "Dutch"
    assert zsre["success"].tolist() == pytest.approx([*zsre["token_acc_new"].iloc[:2], zsre["token_acc_true"].iloc[2]])
    prob = table["prob_new"].to_numpy()
    np.testing.assert_allclose(prob, np.exp(-table["nll_new"].to_numpy()))
    # A target with or without its leading space scores the same.
    spaced = score_edits(model, tokenizer, [REQUESTS[0]], progress=False)
    bare = score_edits(
        model,
        tokenizer,
        [
            EditRequest(
                "0",
                "France",
                "The capital of {} is",
                " Rome",
                " Paris",
                REQUESTS[0].paraphrase_prompts,
                REQUESTS[0].neighborhood,
            )
        ],
        progress=False,
    )
    np.testing.assert_allclose(spaced["nll_new"], bare["nll_new"], atol=1e-6)


def test_bad_requests_raise() -> None:
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(ValueError, match="no edit requests"):
        score_edits(model, tokenizer, [], progress=False)
    with pytest.raises(ValueError, match="no target_true"):
        score_edits(model, tokenizer, [EditRequest("9", "X", "{} is", "a", None)], progress=False)
    with pytest.raises(ValueError, match="empty context"):
        score_continuations(model, 0, [((), (5,))], progress=False)


@pytest.mark.slow
def test_smollm2_batched_equals_single(smollm2) -> None:
    model, tokenizer = smollm2
    batched = score_edits(model, tokenizer, REQUESTS[:2], batch_size=16, progress=False)
    single = score_edits(model, tokenizer, REQUESTS[:2], batch_size=1, progress=False)
    np.testing.assert_allclose(batched["nll_new"], single["nll_new"], atol=1e-4)
    assert batched["greedy"].tolist() == single["greedy"].tolist()
    paris = batched[(batched["case_id"] == "0") & (batched["kind"] == "rewrite")].iloc[0]
    assert paris["success"] == 0.0 and paris["greedy"].strip().startswith("Paris")  # knows the true capital
