"""Edit-request loaders on hand-made records (every malformed case) and on the ../shared/data files."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from editdecay.data import DataFormatError, EditRequest, LocalityPrompt, load_edit_requests, template_from_prompt


def rome_record(case_id: int = 7) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "pararel_idx": 2796,
        "requested_rewrite": {
            "prompt": "The mother tongue of {} is",
            "relation_id": "P103",
            "target_new": {"str": "English", "id": "Q1860"},
            "target_true": {"str": "French", "id": "Q150"},
            "subject": "Danielle Darrieux",
        },
        "paraphrase_prompts": [
            "Shayna does this. Danielle Darrieux spoke the language",
            "Danielle Darrieux's mother tongue is",
        ],
        "neighborhood_prompts": ["Michel Rocard is a native speaker of", "Louis Bonaparte, speaker of"],
        "attribute_prompts": ["J. R. R. Tolkien is a native speaker of"],
        "generation_prompts": ["Danielle Darrieux's mother tongue is"],
    }


def easyedit_record(case_id: int = 0) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "prompt": "The mother tongue of Danielle Darrieux is",
        "target_new": "English",
        "subject": "Danielle Darrieux",
        "ground_truth": "French",
        "rephrase_prompt": "Where Danielle Darrieux is from, people speak the language of",
        "locality_prompt": "Michel Rocard is a native speaker of",
        "locality_ground_truth": "French",
    }


def zsre_record() -> dict[str, Any]:
    return {
        "subject": "UniFirst",
        "src": "What is the product made by UniFirst?",
        "pred": "uniform",
        "rephrase": "What will be the product of UniFirst?",
        "alt": "unmanned aircraft",
        "answers": ["uniform", "uniforms"],
        "loc": "nq question: john goodman's character in the big lebowski",
        "loc_ans": "Walter Sobchak",
        "cond": "uniform >> unmanned aircraft || What is the product made by UniFirst?",
    }


def builtin_record(case_id: str = "capital-0") -> dict[str, Any]:
    return {
        "case_id": case_id,
        "subject": "France",
        "template": "The capital of {} is",
        "target_true": "Paris",
        "target_new": "Rome",
        "relation": "capital",
        "paraphrases": ["{}'s capital city is", "The seat of government of {} is in"],
        "neighborhood": [
            {"prompt": "The Eiffel Tower is in", "answer": "Paris"},
            {"prompt": "The Louvre is located in"},
        ],
    }


MAKERS: dict[str, Callable[[], dict[str, Any]]] = {
    "counterfact-rome": rome_record,
    "counterfact-easyedit": easyedit_record,
    "zsre": zsre_record,
    "builtin": builtin_record,
}


def write_json(path: Path, records: list[Any]) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    return path


def test_rome_format(tmp_path):
    path = write_json(tmp_path / "cf.json", [rome_record()])
    [request] = load_edit_requests(path)
    assert request == EditRequest(
        case_id="7",
        subject="Danielle Darrieux",
        template="The mother tongue of {} is",
        target_new="English",
        target_true="French",
        paraphrase_prompts=(
            "Shayna does this. Danielle Darrieux spoke the language",
            "Danielle Darrieux's mother tongue is",
        ),
        neighborhood=(
            LocalityPrompt("Michel Rocard is a native speaker of", "French"),
            LocalityPrompt("Louis Bonaparte, speaker of", "French"),
        ),
        relation_id="P103",
        source=str(path),
        metric_family="counterfact",
    )
    assert request.prompt == "The mother tongue of Danielle Darrieux is"


def test_easyedit_format(tmp_path):
    path = write_json(tmp_path / "cf.json", [easyedit_record()])
    [request] = load_edit_requests(path)
    assert request == EditRequest(
        case_id="0",
        subject="Danielle Darrieux",
        template="The mother tongue of {} is",
        target_new="English",
        target_true="French",
        paraphrase_prompts=("Where Danielle Darrieux is from, people speak the language of",),
        neighborhood=(LocalityPrompt("Michel Rocard is a native speaker of", "French"),),
        relation_id=None,
        source=str(path),
        metric_family="counterfact",
    )
    record = easyedit_record()
    del record["locality_ground_truth"]  # CounterFact neighbors share the true object
    [request] = load_edit_requests(write_json(tmp_path / "noans.json", [record]))
    assert request.neighborhood == (LocalityPrompt("Michel Rocard is a native speaker of", "French"),)


def test_zsre_format_answers_and_alt(tmp_path):
    path = write_json(tmp_path / "zsre.json", [zsre_record()])
    [memit] = load_edit_requests(path)
    assert memit == EditRequest(
        case_id="0",
        subject="UniFirst",
        template="What is the product made by {}?",
        target_new="uniform",
        target_true=None,
        paraphrase_prompts=("What will be the product of UniFirst?",),
        neighborhood=(LocalityPrompt("nq question: john goodman's character in the big lebowski?", "Walter Sobchak"),),
        relation_id=None,
        source=str(path),
        metric_family="zsre",
    )
    assert memit.extra == {"pred": "uniform"}
    [alt] = load_edit_requests(path, zsre_target="alt")
    assert (alt.target_new, alt.target_true) == ("unmanned aircraft", "uniform")
    record = zsre_record()
    del record["loc"], record["loc_ans"]
    [no_loc] = load_edit_requests(write_json(tmp_path / "noloc.json", [record]))
    assert no_loc.neighborhood == ()


def test_builtin_format_from_a_file(tmp_path):
    path = write_json(tmp_path / "suite.json", [builtin_record()])
    [request] = load_edit_requests(path)
    assert request == EditRequest(
        case_id="capital-0",
        subject="France",
        template="The capital of {} is",
        target_new="Rome",
        target_true="Paris",
        paraphrase_prompts=("France's capital city is", "The seat of government of France is in"),
        neighborhood=(
            LocalityPrompt("The Eiffel Tower is in", "Paris"),
            LocalityPrompt("The Louvre is located in", "Paris"),
        ),
        relation_id="capital",
        source=str(path),
        metric_family="counterfact",
    )


@pytest.mark.parametrize("fmt", sorted(MAKERS))
def test_json_and_jsonl_agree_and_explicit_format(tmp_path, fmt):
    records = [MAKERS[fmt]() for _ in range(3)]
    for i, record in enumerate(records):
        record["case_id"] = f"id-{i}"
    from_json = load_edit_requests(write_json(tmp_path / "a.json", records))
    from_jsonl = load_edit_requests(write_jsonl(tmp_path / "a.jsonl", records), fmt=fmt)  # type: ignore[arg-type]
    assert [r.case_id for r in from_json] == ["id-0", "id-1", "id-2"]
    assert [r.to_dict() | {"source": ""} for r in from_json] == [r.to_dict() | {"source": ""} for r in from_jsonl]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            record = record[key]
        record[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            record = record[key]
        del record[last]

    return mutate


MALFORMED = [
    # (format, mutation, field named in the error, words in the problem)
    ("counterfact-easyedit", _drop("subject"), "subject", "missing"),
    ("counterfact-easyedit", _set("subject", "Jacques Chirac"), "prompt", "does not occur in prompt"),
    ("counterfact-easyedit", _set("target_new", ""), "target_new", "empty or whitespace"),
    ("counterfact-easyedit", _set("target_new", "   "), "target_new", "empty or whitespace"),
    ("counterfact-easyedit", _set("target_new", 5), "target_new", "expected a string, got int"),
    ("counterfact-easyedit", _set("ground_truth", ["French"]), "ground_truth", "expected a string, got list"),
    ("counterfact-easyedit", _set("subject", None), "subject", "expected a string, got NoneType"),
    ("counterfact-easyedit", _set("rephrase_prompt", 3), "rephrase_prompt", "string or a list of strings"),
    ("counterfact-easyedit", _set("locality_prompt", ["ok", 1]), "locality_prompt", "string or a list of strings"),
    ("counterfact-easyedit", _set("locality_ground_truth", " "), "locality_ground_truth", "empty"),
    ("counterfact-easyedit", _set("case_id", 1.5), "case_id", "integer or a non-empty string"),
    ("counterfact-easyedit", _set("case_id", True), "case_id", "integer or a non-empty string"),
    ("counterfact-easyedit", _set("relation_id", 103), "relation_id", "expected a string"),
    ("counterfact-rome", _drop("requested_rewrite"), "requested_rewrite", "missing or not an object"),
    ("counterfact-rome", _set("requested_rewrite", "x"), "requested_rewrite", "missing or not an object"),
    ("counterfact-rome", _drop("requested_rewrite.subject"), "requested_rewrite.subject", "missing"),
    ("counterfact-rome", _set("requested_rewrite.subject", ""), "requested_rewrite.subject", "empty"),
    (
        "counterfact-rome",
        _set("requested_rewrite.prompt", "The {} of {} is"),
        "requested_rewrite.prompt",
        "exactly one '{}'",
    ),
    (
        "counterfact-rome",
        _set("requested_rewrite.prompt", "The mother tongue is"),
        "requested_rewrite.prompt",
        "exactly one '{}'",
    ),
    (
        "counterfact-rome",
        _set("requested_rewrite.prompt", "The {0} of {name}"),
        "requested_rewrite.prompt",
        "exactly one '{}'",
    ),
    ("counterfact-rome", _set("requested_rewrite.prompt", "The {} of {"), "requested_rewrite.prompt", "bad template"),
    ("counterfact-rome", _set("requested_rewrite.prompt", "The {} is}"), "requested_rewrite.prompt", "bad template"),
    ("counterfact-rome", _drop("requested_rewrite.target_new.str"), "requested_rewrite.target_new.str", "missing"),
    ("counterfact-rome", _set("requested_rewrite.target_new.str", " "), "requested_rewrite.target_new.str", "empty"),
    (
        "counterfact-rome",
        _set("requested_rewrite.target_true", "French"),
        "requested_rewrite.target_true",
        "not an object",
    ),
    (
        "counterfact-rome",
        _set("requested_rewrite.relation_id", 103),
        "requested_rewrite.relation_id",
        "expected a string",
    ),
    ("counterfact-rome", _set("neighborhood_prompts", {"a": 1}), "neighborhood_prompts", "list of strings"),
    ("counterfact-rome", _set("paraphrase_prompts", [None]), "paraphrase_prompts", "list of strings"),
    ("zsre", _drop("subject"), "subject", "missing"),
    ("zsre", _set("subject", "Hanes"), "src", "does not occur in prompt"),
    ("zsre", _set("src", ""), "src", "empty"),
    ("zsre", _set("answers", []), "answers", "non-empty list of strings"),
    ("zsre", _set("answers", "uniform"), "answers", "non-empty list of strings"),
    ("zsre", _set("answers", [" ", "x"]), "answers", "first answer is empty"),
    ("zsre", _set("answers", ["a", 1]), "answers", "non-empty list of strings"),
    ("zsre", _drop("loc_ans"), "loc_ans", "missing"),
    ("zsre", _set("rephrase", 0), "rephrase", "list of strings"),
    ("builtin", _set("template", "{} and {}"), "template", "exactly one '{}'"),
    ("builtin", _set("target_true", ""), "target_true", "empty"),
    ("builtin", _drop("target_new"), "target_new", "missing"),
    ("builtin", _set("paraphrases", ["no placeholder here"]), "paraphrases", "exactly one '{}'"),
    ("builtin", _set("neighborhood", "The Louvre"), "neighborhood", "expected a list"),
    ("builtin", _set("neighborhood", [{"answer": "Paris"}]), "neighborhood", "needs a 'prompt'"),
    ("builtin", _set("neighborhood", [{"prompt": "x", "answer": 3}]), "neighborhood", "non-empty text"),
    ("builtin", _set("relation", ["capital"]), "relation", "expected a string"),
]


@pytest.mark.parametrize(
    ("fmt", "mutate", "field_name", "problem"), MALFORMED, ids=[f"{m[0]}:{m[2]}:{m[3]}"[:60] for m in MALFORMED]
)
def test_malformed_records_name_file_record_and_field(tmp_path, fmt, mutate, field_name, problem):
    good, bad = MAKERS[fmt](), MAKERS[fmt]()
    good["case_id"], bad["case_id"] = "first", "second"
    mutate(bad)
    path = write_json(tmp_path / "edits.json", [good, bad])
    with pytest.raises(DataFormatError) as err:
        load_edit_requests(path, fmt=fmt)
    assert (err.value.source, err.value.index, err.value.field_name) == (str(path), 1, field_name)
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{path}, record 1, field {field_name!r}: ")
    # A bad record far down the file is found even when only the first record is asked for.
    with pytest.raises(DataFormatError):
        load_edit_requests(path, 1, fmt=fmt)
    # ... and the skip policy leaves exactly it out, with one counted warning.
    with pytest.warns(UserWarning, match=r"Skipped 1 of 2 malformed records"):
        kept = load_edit_requests(path, fmt=fmt, on_invalid="skip")
    assert [r.case_id for r in kept] == ["first"]


def test_zsre_loc_question_is_scored_with_a_question_mark(tmp_path):
    # MEMIT's zsRE protocol prompts the neighborhood as loc + "?"; a "?" already there is not doubled.
    record = zsre_record()
    asked = dict(record, case_id=1, loc="who wrote the iliad?")
    [plain, marked] = load_edit_requests(write_json(tmp_path / "z.json", [record, asked]))
    assert plain.neighborhood == (
        LocalityPrompt("nq question: john goodman's character in the big lebowski?", "Walter Sobchak"),
    )
    assert marked.neighborhood == (LocalityPrompt("who wrote the iliad?", "Walter Sobchak"),)


def test_zsre_empty_alt_only_matters_when_alt_is_the_target(tmp_path):
    record = zsre_record()
    record["alt"] = ""
    path = write_json(tmp_path / "zsre.json", [record])
    assert load_edit_requests(path)[0].target_new == "uniform"
    with pytest.raises(DataFormatError, match=r"record 0, field 'alt': empty"):
        load_edit_requests(path, zsre_target="alt")


def test_duplicate_case_ids(tmp_path):
    records = [easyedit_record(3), easyedit_record(4), easyedit_record(3)]
    path = write_json(tmp_path / "dup.json", records)
    with pytest.raises(DataFormatError) as err:
        load_edit_requests(path)
    assert (err.value.index, err.value.field_name) == (2, "case_id")
    assert "duplicate case id '3' (first in record 0)" in str(err.value)
    with pytest.warns(UserWarning, match="Skipped 1 of 3"):
        assert [r.case_id for r in load_edit_requests(path, on_invalid="skip")] == ["3", "4"]
    # Records without ids get their index, so zsRE-style files never collide.
    no_ids = write_json(tmp_path / "z.json", [zsre_record()] * 3)
    assert [r.case_id for r in load_edit_requests(no_ids)] == ["0", "1", "2"]


def test_selection_first_n_and_seeded_samples(tmp_path):
    path = write_json(tmp_path / "many.json", [easyedit_record(i) for i in range(40)])
    assert [r.case_id for r in load_edit_requests(path, 5)] == ["0", "1", "2", "3", "4"]
    sample_a = [r.case_id for r in load_edit_requests(path, 8, seed=1)]
    assert sample_a == [r.case_id for r in load_edit_requests(path, 8, seed=1)]
    sample_b = [r.case_id for r in load_edit_requests(path, 8, seed=2)]
    assert sample_a != sample_b
    for sample in (sample_a, sample_b):
        assert len(set(sample)) == 8 and sample == sorted(sample, key=int)  # file order, no repeats
    assert sample_a != [str(i) for i in range(8)]
    assert len(load_edit_requests(path)) == len(load_edit_requests(path, 40, seed=3)) == 40
    with pytest.raises(ValueError, match=r"Asked for 41 edit requests but .*many\.json has only 40 valid ones"):
        load_edit_requests(path, 41)
    with pytest.raises(ValueError, match="n must be positive"):
        load_edit_requests(path, 0)


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such data file"):
        load_edit_requests(tmp_path / "absent.json")
    cases = {
        "trailing.json": ('[{"a": 1},]', "invalid JSON"),
        "lines.jsonl": ('{"prompt": "x"}\n{"prompt": oops}\n', "invalid JSON on line 2"),
        "object.json": ('{\n  "data": [1, 2]\n}\n', "holds one JSON object; expected a JSON list"),
        "empty.json": ("[]", "holds no records"),
        "blank.jsonl": ("\n\n", "holds no records"),
        "unknown.json": ('[{"question": "q", "answer": "a"}]', "unrecognised edit-request format"),
    }
    for name, (text, problem) in cases.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataFormatError, match=problem) as err:
            load_edit_requests(path)
        assert str(err.value).startswith(str(path))
    not_objects = write_json(tmp_path / "lists.json", [easyedit_record(), ["a", "b"]])
    with pytest.raises(DataFormatError, match=r"record 1: expected an object, got list"):
        load_edit_requests(not_objects)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('[{"prompt": "Café"}]'.encode("latin-1"))
    with pytest.raises(DataFormatError, match="not UTF-8"):
        load_edit_requests(latin1)
    good = write_json(tmp_path / "good.json", [easyedit_record()])
    with pytest.raises(ValueError, match="Unknown edit-request format 'rome'"):
        load_edit_requests(good, fmt="rome")  # type: ignore[arg-type]
    with pytest.raises(DataFormatError, match=r"record 0, field 'requested_rewrite'"):
        load_edit_requests(good, fmt="counterfact-rome")


def test_braces_in_prompts_are_escaped(tmp_path):
    record = easyedit_record()
    record["prompt"] = "In {curly} notation, the mother tongue of Danielle Darrieux is"
    record2 = easyedit_record(1)
    record2["subject"] = "Danielle {D} Darrieux"
    record2["prompt"] = "The mother tongue of Danielle {D} Darrieux is"
    first, second = load_edit_requests(write_json(tmp_path / "b.json", [record, record2]))
    assert first.template == "In {{curly}} notation, the mother tongue of {} is"
    assert first.prompt == record["prompt"]
    assert second.template == "The mother tongue of {} is" and second.prompt == record2["prompt"]
    assert template_from_prompt("{x} Paris {y} Paris", "Paris") == "{{x}} {} {{y}} Paris"
    builtin = builtin_record()
    builtin["template"] = "In {{set}} terms, the capital of {} is"
    [request] = load_edit_requests(write_json(tmp_path / "t.json", [builtin]))
    assert request.prompt == "In {set} terms, the capital of France is"
    builtin["template"] = "Empty braces {{}} aside, the capital of {} is"
    [request] = load_edit_requests(write_json(tmp_path / "t2.json", [builtin]))
    assert request.prompt == "Empty braces {} aside, the capital of France is"


def test_edit_request_dict_round_trip(tmp_path):
    [request] = load_edit_requests(write_json(tmp_path / "z.json", [zsre_record()]))
    restored = EditRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert restored == request and restored.extra == request.extra
    assert isinstance(restored.neighborhood[0], LocalityPrompt)


def test_records_are_not_mutated(tmp_path):
    records = [rome_record(1), rome_record(2)]
    snapshot = copy.deepcopy(records)
    path = write_json(tmp_path / "r.json", records)
    load_edit_requests(path)
    assert json.loads(path.read_text()) == snapshot


# --- ../shared/data -------------------------------------------------------------------------------------


def test_shared_counterfact_easyedit(shared_data):
    path = shared_data / "counterfact" / "counterfact-edit.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    requests = load_edit_requests(path)
    assert len(requests) == len(raw) == 10000
    assert len({r.case_id for r in requests}) == 10000
    for request, record in zip(requests, raw, strict=True):
        assert request.prompt == record["prompt"]
        assert (request.target_new, request.target_true) == (record["target_new"], record["ground_truth"])
        assert len(request.paraphrase_prompts) == 1 and len(request.neighborhood) == 1


def test_shared_counterfact_rome_500(shared_data):
    path = shared_data / "counterfact" / "rome_format" / "counterfact_500.json"
    requests = load_edit_requests(path)
    assert len(requests) == 500
    assert all(len(r.paraphrase_prompts) == 2 and len(r.neighborhood) == 10 for r in requests)
    assert all(n.answer == r.target_true for r in requests for n in r.neighborhood)
    assert all(r.relation_id and r.relation_id.startswith("P") for r in requests)
    # The same case ids in the EasyEdit split give the same edit.
    easyedit = {r.case_id: r for r in load_edit_requests(shared_data / "counterfact" / "counterfact-edit.json")}
    shared = [r for r in requests if r.case_id in easyedit]
    assert shared
    for request in shared:
        other = easyedit[request.case_id]
        assert (request.prompt, request.target_new, request.target_true) == (
            other.prompt,
            other.target_new,
            other.target_true,
        )


@pytest.mark.parametrize(
    ("name", "count"),
    [("zsre_mend_eval_portability_gpt4.json", 1037), ("zsre_mend_train-1k.json", 1000), ("zsre-sample-200.json", 200)],
)
def test_shared_zsre(shared_data, name, count):
    path = shared_data / "zsre" / name
    raw = json.loads(path.read_text(encoding="utf-8"))
    requests = load_edit_requests(path)
    # Every record's subject occurs verbatim in its question, so no record is skipped or rewritten.
    assert len(requests) == count == sum(r["subject"] in r["src"] for r in raw)
    assert all(r.metric_family == "zsre" and r.target_true is None for r in requests)
    for request, record in zip(requests, raw, strict=True):
        assert (request.prompt, request.target_new) == (record["src"], record["answers"][0])
        assert request.neighborhood == (LocalityPrompt(record["loc"] + "?", record["loc_ans"]),)
    empty_alt = [i for i, rec in enumerate(raw) if not rec["alt"].strip()]
    if not empty_alt:
        assert len(load_edit_requests(path, zsre_target="alt")) == count
        return
    # The MEND train subset has records with an empty `alt`: an error by default, left out on request.
    with pytest.raises(DataFormatError, match=rf"record {empty_alt[0]}, field 'alt'"):
        load_edit_requests(path, zsre_target="alt")
    with pytest.warns(UserWarning, match=rf"Skipped {len(empty_alt)} of {count}"):
        assert len(load_edit_requests(path, zsre_target="alt", on_invalid="skip")) == count - len(empty_alt)
