"""Decay metrics on hand-made success flags (EFR, reverse flips, outcome classes, control) and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from editdecay.evaluation import control_summary, decay_summary, flip_counts, outcome_classes
from tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

CASES = ["c1", "c2", "c3", "c4", "c5", "c6"]


def _per_edit(success: list[int], answers: list[str], knows: list[int] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "case_id": CASES,
            "es": [float(s) for s in success],
            "ps": [0.5] * 6,
            "ns": [1.0] * 6,
            "success": [float(s) for s in success],
            "knows_true": [float(k) for k in (knows or [0] * 6)],
            "answer": answers,
            "target_true": ["Paris", "Paris", "Rome", "Oslo", "Bern", "Oslo"],
            "metric_family": "counterfact",
        }
    )


@pytest.fixture
def groups() -> dict[str, pd.DataFrame]:
    # Med -> Med_ft: c1 stable, c2 c3 c6 erased, c4 emergent, c5 impossible.
    return {
        "M": _per_edit(
            [0, 0, 0, 0, 0, 0], [" Paris", " Paris", " Rome", " Oslo", " Bern", " Oslo"], knows=[1, 1, 1, 1, 0, 1]
        ),
        "Med": _per_edit(
            [1, 1, 1, 0, 0, 1], [" Lyon", " Lyon", " Lyon", " Bern", " Bern", " Lyon"], knows=[0, 0, 0, 1, 0, 0]
        ),
        "Mft": _per_edit([0, 0, 0, 0, 0, 0], [" Paris"] * 6, knows=[1, 0, 1, 1, 0, 0]),
        "Med_ft": _per_edit(
            [1, 0, 0, 1, 0, 0], [" Lyon", " Paris", " Milan", " x", " Bern", " MILAN "], knows=[0, 1, 0, 0, 1, 0]
        ),
    }


def test_decay_summary_exact(groups: dict[str, pd.DataFrame]) -> None:
    summary = decay_summary(groups)
    assert summary["groups"]["Med"]["es"] == pytest.approx(400 / 6)
    assert summary["groups"]["Med_ft"]["es"] == pytest.approx(200 / 6)
    assert summary["delta_es_pp"] == pytest.approx(200 / 6)
    assert summary["decrease_rate"] == pytest.approx(0.5)
    assert (summary["efr"], summary["flips"], summary["successes_after_edit"]) == (0.75, 3, 4)
    assert (summary["reverse_flip_ratio"], summary["reverse_flips"], summary["failures_after_edit"]) == (0.5, 1, 2)
    outcomes = summary["outcomes"]
    assert [outcomes[k] for k in ("stable", "erased", "emergent", "impossible")] == [1, 3, 1, 1]
    assert (outcomes["erased_to_original"], outcomes["erased_to_third"]) == (1, 2)
    assert outcomes["top_third_answers"] == [["milan", 2]]
    knowledge = summary["knowledge"]
    assert knowledge["M->Mft"]["forgotten"] == 2 and knowledge["M->Mft"]["known_before"] == 5
    assert knowledge["M->Mft"]["forget_ratio"] == pytest.approx(0.4)
    assert knowledge["M->Mft"]["learned"] == 0 and knowledge["M->Mft"]["unknown_before"] == 1
    assert knowledge["M->Mft"]["delta_known_pp"] == pytest.approx(100 * (5 - 3) / 6)
    json.dumps(summary)  # JSON-serialisable as written by the CLI and the pipeline


def test_generation_family_decays_on_its_own_indicator(groups: dict[str, pd.DataFrame]) -> None:
    """The generation family gets its own EFR and classes from gen_success, independent of `success`."""
    said = {"Med": [1, 1, 0, 0, 1, 1], "Med_ft": [0, 1, 0, 1, 0, 1]}  # c1 c5 erased, c2 c6 stable, c4 emergent
    tables = {
        group: table.assign(gen_success=[float(v) for v in said[group]], gen_es=[float(v) for v in said[group]])
        for group, table in groups.items()
        if group in said
    }
    generation = decay_summary(tables)["generation"]
    assert (generation["efr"], generation["flips"], generation["successes_after_edit"]) == (0.5, 2, 4)
    assert (generation["reverse_flips"], generation["failures_after_edit"]) == (1, 2)
    assert generation["delta_es_pp"] == pytest.approx(100 * (4 - 3) / 6)
    assert generation["outcomes"] == {"stable": 2, "erased": 2, "emergent": 1, "impossible": 1}
    assert decay_summary(tables)["efr"] == 0.75  # the probability family is unchanged
    classes = outcome_classes(tables["Med"], tables["Med_ft"], indicator="gen_success")
    assert classes["outcome"].tolist() == ["erased", "stable", "impossible", "emergent", "erased", "stable"]
    assert "generation" not in decay_summary(groups)  # tables written before the family: no block


def test_outcome_classes_with_and_without_m(groups: dict[str, pd.DataFrame]) -> None:
    classes = outcome_classes(groups["Med"], groups["Med_ft"], groups["M"]).set_index("case_id")
    assert classes["outcome"].tolist() == ["stable", "erased", "erased", "emergent", "impossible", "erased"]
    assert classes.loc["c2", "erased_to"] == "original"  # back to M's answer " Paris"
    assert classes.loc["c3", "erased_to"] == "third" and classes.loc["c3", "third_answer"] == " Milan"
    assert classes.loc["c6", "erased_to"] == "third"  # " MILAN " differs from M's " Oslo"
    assert classes.loc[["c1", "c4", "c5"], "erased_to"].isna().all()
    assert classes.loc["c3", "answer_M"] == " Rome" and (classes["reference"] == "M").all()

    # Without M the reference is target_true (a prefix match: " Paris, France" counts as Paris).
    med_ft = groups["Med_ft"].copy()
    med_ft.loc[1, "answer"] = " Paris, France"
    no_m = outcome_classes(groups["Med"], med_ft).set_index("case_id")
    assert no_m.loc["c2", "erased_to"] == "original" and no_m.loc["c3", "erased_to"] == "third"
    assert no_m["answer_M"].isna().all() and (no_m["reference"] == "target_true").all()


def test_flip_counts_handles_empty_denominators() -> None:
    stats = flip_counts(pd.Series([1, 1]), pd.Series([1, 1]))
    assert stats["flip_ratio"] == 0.0 and stats["reverse_flip_ratio"] is None and stats["failures_before"] == 0


def test_subsets_of_groups_and_control(groups: dict[str, pd.DataFrame]) -> None:
    only_ft = decay_summary({"M": groups["M"], "Mft": groups["Mft"]})
    assert "efr" not in only_ft and "outcomes" not in only_ft
    assert only_ft["knowledge"]["M->Mft"]["forgotten"] == 2
    control = control_summary(groups)
    assert control["known"]["M"] == pytest.approx(500 / 6)
    assert control["Med->Med_ft"]["learned"] == 2 and control["Med->Med_ft"]["forgotten"] == 1
    assert control["Mft->Med_ft"]["forget_ratio"] == 1.0
    assert control["n"] == {"M": 6, "Med": 6, "Mft": 6, "Med_ft": 6}


def test_bad_inputs(groups: dict[str, pd.DataFrame]) -> None:
    with pytest.raises(ValueError, match="Unknown model groups"):
        decay_summary({"M": groups["M"], "edited": groups["Med"]})
    doubled = pd.concat([groups["Med"], groups["Med"]])
    with pytest.raises(ValueError, match="duplicate case_ids"):
        decay_summary({"Med": doubled, "Med_ft": groups["Med_ft"]})


EDITS = [
    {
        "case_id": i,
        "subject": s,
        "prompt": f"The capital of {s} is",
        "ground_truth": c,
        "target_new": n,
        "rephrase_prompt": f"{s}'s capital is",
        "locality_prompt": "The capital of Italy is",
        "locality_ground_truth": "Rome",
    }
    for i, (s, c, n) in enumerate(
        [("France", "Paris", "Madrid"), ("Spain", "Madrid", "Tokyo"), ("Japan", "Tokyo", "Paris")]
    )
]


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer(add_bos=True).save_pretrained(model_dir)
    (tmp_path / "edits.json").write_text(json.dumps(EDITS))
    return tmp_path


def _invoke(args: list[str]):
    from editdecay.cli import app

    # A wide terminal: the error box must not wrap the long tmp paths the tests look for (under pytest-xdist the
    # workers have no terminal and rich falls back to 80 columns).
    return CliRunner().invoke(app, ["evaluate", *args, "--no-progress"], env={"COLUMNS": "300"})


def test_cli_evaluate_base_model(tiny_dir: Path) -> None:
    out = tiny_dir / "out"
    result = _invoke(
        [
            "--model",
            str(tiny_dir / "model"),
            "--dataset",
            str(tiny_dir / "edits.json"),
            "--n",
            "2",
            "--tasks",
            "builtin-commonsense",
            "--limit",
            "6",
            "--out",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"] == ["M"] and summary["n"] == 2
    assert set(summary["downstream"]["M"]) == {"builtin-commonsense", "average"}
    edits = pd.read_parquet(out / "edits.parquet")
    assert len(edits) == 6 and set(edits["group"]) == {"M"}
    assert len(pd.read_parquet(out / "downstream.parquet")) == 6
    assert not (out / "activations.parquet").exists()  # one group: nothing to compare


def test_cli_evaluate_errors_are_clear(tiny_dir: Path) -> None:
    result = _invoke(
        [
            "--model",
            str(tiny_dir / "model"),
            "--dataset",
            str(tiny_dir / "missing.json"),
            "--out",
            str(tiny_dir / "out"),
        ]
    )
    assert result.exit_code != 0 and "missing.json" in result.output
    result = _invoke(
        [
            "--model",
            str(tiny_dir / "model"),
            "--dataset",
            str(tiny_dir / "edits.json"),
            "--tasks",
            "boolq",
            "--data-dir",
            str(tiny_dir),
            "--out",
            str(tiny_dir / "out"),
        ]
    )
    assert result.exit_code != 0 and "test.json" in result.output


def test_cli_evaluate_with_adapter(tiny_dir: Path) -> None:
    finetuning = pytest.importorskip("editdecay.finetuning")
    from editdecay.data import load_corpus
    from editdecay.models import load_model

    base = load_model(str(tiny_dir / "model")).model
    spec = finetuning.FinetuneSpec(method="lora", epochs=1, batch_size=4, cutoff_len=64, compute_dtype="float32")
    finetuning.finetune(
        base,
        tiny_tokenizer(add_bos=True),
        load_corpus("builtin", max_examples=8),
        spec,
        out_dir=tiny_dir / "adapter",
        progress=False,
    )
    out = tiny_dir / "out"
    result = _invoke(
        [
            "--model",
            str(tiny_dir / "model"),
            "--adapter",
            str(tiny_dir / "adapter"),
            "--dataset",
            str(tiny_dir / "edits.json"),
            "--tasks",
            "builtin-commonsense",
            "--limit",
            "4",
            "--activation-prompts",
            "4",
            "--out",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"] == ["M", "Mft"]
    assert "M->Mft" in summary["edits"]["decay"]["knowledge"]
    activations = pd.read_parquet(out / "activations.parquet")
    assert set(activations["pair"]) == {"Mft-M"} and activations["drift"].gt(0).any()


def test_cli_evaluate_with_patch_and_adapter(tiny_dir: Path) -> None:
    editing = pytest.importorskip("editdecay.editing")
    finetuning = pytest.importorskip("editdecay.finetuning")
    import torch

    from editdecay.data import load_corpus
    from editdecay.models import load_model, model_fingerprint

    edited = load_model(str(tiny_dir / "model")).model
    name = "model.layers.1.mlp.down_proj.weight"
    delta = 0.5 * torch.randn(edited.get_parameter(name).shape, generator=torch.Generator().manual_seed(0))
    patch = editing.WeightPatch(
        {name: delta}, {"base_fingerprint": model_fingerprint(edited), "layers": [1], "request_ids": ["0", "1", "2"]}
    )
    patch.save(tiny_dir / "patch")
    patch.apply(edited)
    spec = finetuning.FinetuneSpec(method="lora", epochs=1, batch_size=4, cutoff_len=64, compute_dtype="float32")
    finetuning.finetune(
        edited,
        tiny_tokenizer(add_bos=True),
        load_corpus("builtin", max_examples=8),
        spec,
        out_dir=tiny_dir / "adapter",
        progress=False,
    )
    out = tiny_dir / "out"
    result = _invoke(
        [
            "--model",
            str(tiny_dir / "model"),
            "--patch",
            str(tiny_dir / "patch"),
            "--adapter",
            str(tiny_dir / "adapter"),
            "--dataset",
            str(tiny_dir / "edits.json"),
            "--control",
            str(tiny_dir / "edits.json"),
            "--activation-prompts",
            "3",
            "--out",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"] == ["M", "Med", "Med_ft"]
    decay = summary["edits"]["decay"]
    assert decay["successes_after_edit"] + decay["failures_after_edit"] == 3
    assert sum(decay["outcomes"][k] for k in ("stable", "erased", "emergent", "impossible")) == 3
    assert set(pd.read_parquet(out / "outcomes.parquet")["case_id"]) == {"0", "1", "2"}
    assert "M->Med" in summary["control"] and "ns_agreement" in pd.read_parquet(out / "edits_per_edit.parquet")
    activations = pd.read_parquet(out / "activations.parquet")
    assert set(activations["pair"]) == {"Med-M", "Med_ft-Med"}
    assert activations.loc[activations["pair"] == "Med-M"].set_index("layer")["drift"].loc[0] == 0  # below the patch
    assert activations.loc[activations["pair"] == "Med-M"].set_index("layer")["drift"].loc[1] > 0


def _saved_patch(tiny_dir: Path, request_ids: list[str]) -> Path:
    import torch

    from editdecay.editing import WeightPatch
    from editdecay.models import load_model, model_fingerprint

    model = load_model(str(tiny_dir / "model")).model
    name = "model.layers.1.mlp.down_proj.weight"
    delta = 0.1 * torch.randn(model.get_parameter(name).shape, generator=torch.Generator().manual_seed(0))
    patch = WeightPatch(
        {name: delta}, {"base_fingerprint": model_fingerprint(model), "layers": [1], "request_ids": request_ids}
    )
    return patch.save(tiny_dir / "patch")


def test_cli_evaluate_refuses_requests_other_than_the_patchs(tiny_dir: Path) -> None:
    # The patch edited requests 0, 1 and 9; the evaluation asks for the first two of edits.json (0, 1).
    patch = _saved_patch(tiny_dir, ["0", "1", "9"])
    args = [
        "--model",
        str(tiny_dir / "model"),
        "--patch",
        str(patch),
        "--dataset",
        str(tiny_dir / "edits.json"),
        "--n",
        "2",
        "--no-activations",
        "--out",
        str(tiny_dir / "out"),
    ]
    refused = _invoke(args)
    text = " ".join(refused.output.replace("│", " ").split())
    assert refused.exit_code == 2, refused.output
    assert "Invalid value for --patch/--dataset" in text
    assert "2 of the 2 evaluated requests are in the patch, 1 of the patch's 3 requests are not evaluated" in text
    assert "--allow-other-requests" in text and not (tiny_dir / "out").exists()
    # All three of edits.json: request 2 is not in the patch, 9 is not evaluated.
    refused = _invoke([a for a in args if a not in ("--n", "2")])
    assert refused.exit_code == 2
    assert "2 of the 3 evaluated requests are in the patch, 1 of the patch's 3 requests are not evaluated" in " ".join(
        refused.output.replace("│", " ").split()
    )
    allowed = _invoke([*args, "--allow-other-requests"])
    assert allowed.exit_code == 0, allowed.output
    assert (
        "WARNING: the evaluated requests are not the ones --patch edited: 2 of the 2 evaluated requests are in "
        "the patch, 1 of the patch's 3 requests are not evaluated; continuing because of --allow-other-requests"
        in allowed.output
    )
    assert json.loads((tiny_dir / "out" / "summary.json").read_text())["groups"] == ["M", "Med"]


def test_cli_evaluate_accepts_the_patchs_requests_in_any_order(tiny_dir: Path) -> None:
    patch = _saved_patch(tiny_dir, ["2", "0", "1"])
    result = _invoke(
        [
            "--model",
            str(tiny_dir / "model"),
            "--patch",
            str(patch),
            "--dataset",
            str(tiny_dir / "edits.json"),
            "--no-activations",
            "--out",
            str(tiny_dir / "out"),
        ]
    )
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output


def test_cli_evaluate_seed_samples_like_edit(tiny_dir: Path) -> None:
    from editdecay.data import load_edit_requests

    result = _invoke(
        [
            "--model",
            str(tiny_dir / "model"),
            "--dataset",
            str(tiny_dir / "edits.json"),
            "--n",
            "2",
            "--seed",
            "3",
            "--out",
            str(tiny_dir / "out"),
        ]
    )
    assert result.exit_code == 0, result.output
    expected = [r.case_id for r in load_edit_requests(tiny_dir / "edits.json", 2, seed=3)]
    assert expected == ["0", "2"]  # a sample, not the first two
    edits = pd.read_parquet(tiny_dir / "out" / "edits.parquet")
    assert list(dict.fromkeys(edits["case_id"])) == expected


def test_cli_evaluate_generate_records_the_answer_extraction(tiny_dir: Path) -> None:
    out = tiny_dir / "out"
    result = _invoke(
        [
            "--model",
            str(tiny_dir / "model"),
            "--dataset",
            str(tiny_dir / "edits.json"),
            "--n",
            "1",
            "--tasks",
            "builtin-commonsense",
            "--limit",
            "2",
            "--mode",
            "generate",
            "--answer-extraction",
            "study",
            "--out",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["answer_extraction"] == "study"
    assert pd.read_parquet(out / "downstream.parquet")["answer_extraction"].tolist() == ["study", "study"]
    bad = _invoke(["--model", str(tiny_dir / "model"), "--answer-extraction", "strict", "--out", str(out)])
    assert bad.exit_code == 2 and "use lenient or study" in bad.output
