"""Templates with literal braces ("In {{math}} the set {} is"): editing and scoring see the same prompt text."""

from __future__ import annotations

import pytest
import torch

from editdecay.data import EditRequest
from editdecay.data.records import split_template
from editdecay.editing.subject import check_request, prompt_tokens, target_ids
from editdecay.editing.target_values import _build_batch
from editdecay.evaluation import probe_prompts, score_edits
from editdecay.evaluation.batching import encode
from tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

BRACED = EditRequest("b", "X", "In {{math}} the set {} is", "empty", "full")
EMPTY_PAIR = EditRequest("e", "Rome", "Empty braces {{}} aside, {} is in", "France", "Italy")


def test_split_template_unescapes_literal_braces() -> None:
    assert split_template("In {{math}} the set {} is") == ("In {math} the set ", " is")
    assert split_template("Empty braces {{}} aside, {} is in") == ("Empty braces {} aside, ", " is in")
    assert split_template("{}") == ("", "")
    for request in (BRACED, EMPTY_PAIR):
        head, tail = request.prompt_parts
        assert head + request.subject + tail == request.prompt
    assert BRACED.prompt == "In {math} the set X is"
    for bad in ("no field", "{} and {}", "{0} is", "{:>4} is", "{x} is", "{ is"):
        with pytest.raises(ValueError):
            split_template(bad)


@pytest.mark.parametrize("request_", [BRACED, EMPTY_PAIR], ids=["braces", "empty-pair"])
def test_editing_and_scoring_tokenise_the_same_prompt(request_: EditRequest) -> None:
    tok = tiny_tokenizer(add_bos=True)
    check_request(request_)  # "{{}}" is a literal pair, not a second field
    scored_ids = list(encode(tok, [request_.prompt], specials=True)[0])
    tokens = prompt_tokens(tok, "{}", request_)
    assert tokens.ids == scored_ids
    assert tok.decode(tokens.ids, skip_special_tokens=True) == request_.prompt
    assert tok.decode(tokens.ids[: tokens.subject_index + 1], skip_special_tokens=True).endswith(request_.subject)
    context = "The weather is nice. {}"
    assert prompt_tokens(tok, context, request_).ids == tok(context.format(request_.prompt)).input_ids
    # The target-optimisation batch: prompt + target[:-1], the target read from the prompt's last position.
    target = target_ids(tok, request_.target_new)
    batch = _build_batch(tok, [request_], ["{}"])
    length = int(batch.lengths[0])
    assert batch.input_ids[0, :length].tolist() == scored_ids + target[:-1]
    assert batch.tgt_pos[: len(target)].tolist() == list(range(len(scored_ids) - 1, len(scored_ids) - 1 + len(target)))
    # Activation probes mark the subject's end in the same text.
    [probe] = probe_prompts([request_], [], limit=1)
    assert probe.text == request_.prompt and probe.text[: probe.subject_end].endswith(request_.subject)


def test_editing_sequence_scores_like_score_edits() -> None:
    model, tok = tiny_model("llama", seed=2), tiny_tokenizer(add_bos=True)
    table = score_edits(model, tok, [BRACED], progress=False)
    rewrite = table[table["kind"] == "rewrite"].iloc[0]
    assert rewrite["prompt"] == "In {math} the set X is"
    batch = _build_batch(tok, [BRACED], ["{}"])
    length = int(batch.lengths[0])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=batch.input_ids[:1, :length]).logits[0].float(), dim=-1)
    target = target_ids(tok, BRACED.target_new)
    nll = -logp[batch.tgt_pos[: len(target)], batch.tgt_id[: len(target)]].mean().item()
    assert rewrite["nll_new"] == pytest.approx(nll, abs=1e-5)
