"""Decay curves: edits scored at checkpoints during fine-tuning (finetuning.CurveProbe, evaluation.curve)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from editdecay.data import InstructionExample, load_edit_requests
from editdecay.evaluation import edit_metrics, score_edits
from editdecay.evaluation.curve import curve_summary, edit_curve_measure
from editdecay.finetuning import CurveProbe, FinetuneResult, FinetuneSpec, checkpoint_dir, finetune, load_finetuned
from editdecay.finetuning import loop as loop_module
from editdecay.finetuning.loop import learning_rate
from test_finetune import interrupt_at_step
from tiny import tiny_model, tiny_tokenizer

EXAMPLES = [
    InstructionExample(f"Name a colour number {i}.", "", f"colour {i} is {c}", c)
    for i, c in enumerate(["red", "blue", "green", "white", "black", "pink", "grey", "gold"])
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(method: str = "lora") -> FinetuneSpec:
    return FinetuneSpec(
        method=method, max_steps=4, batch_size=2, cutoff_len=64, compute_dtype="float32", lr=5e-2, warmup_ratio=0.0
    )


def _requests():
    return load_edit_requests("builtin", 4), load_edit_requests("builtin-control", 3)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_last_checkpoint_scores_what_the_saved_model_scores(tmp_path: Path, method: str) -> None:
    model, tokenizer = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    requests, control = _requests()
    probe = CurveProbe(2, edit_curve_measure(tokenizer, requests, control))
    result = finetune(
        model,
        tokenizer,
        EXAMPLES,
        _spec(method),
        out_dir=tmp_path / "ft",
        progress=False,
        probe=probe,
        probe_key="test",
    )
    curve = result.curve
    assert curve is not None
    assert sorted(curve["step"].unique()) == [0, 2, 4]

    for step, scored_model in ((0, model), (4, load_finetuned(model, result, merge=True))):
        for set_name, items in (("edits", requests), ("control", control)):
            expected = edit_metrics(score_edits(scored_model, tokenizer, items, progress=False)).set_index("case_id")
            got = curve[(curve["step"] == step) & (curve["set"] == set_name)].set_index("case_id")
            assert list(got.index) == list(expected.index)
            assert (got["success"] == expected["success"]).all()
            assert (got["knows_true"] == expected["knows_true"]).all()
            # The probe scores the adapter unmerged (float32), the saved model is merged: rounding apart only.
            assert got["es_magnitude"].to_numpy() == pytest.approx(expected["es_magnitude"].to_numpy(), abs=1e-5)


def test_the_probe_does_not_change_training(tmp_path: Path) -> None:
    model, tokenizer = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    requests, control = _requests()
    plain = finetune(model, tokenizer, EXAMPLES, _spec(), out_dir=tmp_path / "plain", progress=False)
    probed = finetune(
        model,
        tokenizer,
        EXAMPLES,
        _spec(),
        out_dir=tmp_path / "probed",
        progress=False,
        probe=CurveProbe(1, edit_curve_measure(tokenizer, requests, control)),
        probe_key="test",
    )
    assert probed.train_losses == plain.train_losses
    assert plain.curve is None and probed.manifest["curve_every"] == 1


def test_an_interrupted_run_keeps_its_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    requests, control = _requests()
    probe = CurveProbe(1, edit_curve_measure(tokenizer, requests, control))

    def probed(name: str, **options) -> FinetuneResult:
        return finetune(
            model,
            tokenizer,
            EXAMPLES,
            _spec(),
            out_dir=tmp_path / name,
            progress=False,
            probe=probe,
            probe_key="test",
            **options,
        )

    reference = probed("ref")
    interrupt_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        probed("run", checkpoint_every_s=0.0)
    saved = json.loads((checkpoint_dir(tmp_path / "run") / "state.json").read_text())
    assert sorted({row["step"] for row in saved["state"]["curve"]}) == [0, 1, 2, 3]
    monkeypatch.setattr(loop_module, "learning_rate", learning_rate)
    resumed = probed("run", checkpoint_every_s=0.0)
    assert resumed.curve is not None and reference.curve is not None
    pd.testing.assert_frame_equal(resumed.curve, reference.curve)


def test_a_probe_needs_a_key_and_a_positive_interval(tmp_path: Path) -> None:
    model, tokenizer = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    with pytest.raises(ValueError, match="every"):
        CurveProbe(0, lambda m: [])
    with pytest.raises(ValueError, match="probe_key"):
        finetune(
            model,
            tokenizer,
            EXAMPLES,
            _spec(),
            out_dir=tmp_path / "x",
            progress=False,
            probe=CurveProbe(1, lambda m: []),
        )


def test_curve_summary_counts_flips_against_the_first_step() -> None:
    rows = []
    # Three edits: a stays, b flips at step 2, c never succeeded; two control facts: y is forgotten at step 2.
    for step, success in ((0, {"a": 1, "b": 1, "c": 0}), (2, {"a": 1, "b": 0, "c": 1})):
        for case, s in success.items():
            rows.append(
                {
                    "step": step,
                    "set": "edits",
                    "case_id": case,
                    "success": float(s),
                    "knows_true": 0.0,
                    "es": float(s),
                    "ps": 0.5,
                    "ns": 1.0,
                    "es_magnitude": 0.4 if s else -0.2,
                }
            )
    for step, known in ((0, {"x": 1, "y": 1}), (2, {"x": 1, "y": 0})):
        for case, k in known.items():
            rows.append(
                {
                    "step": step,
                    "set": "control",
                    "case_id": case,
                    "success": 0.0,
                    "knows_true": float(k),
                    "es": 0.0,
                    "ps": 0.0,
                    "ns": 1.0,
                    "es_magnitude": -0.5,
                }
            )
    summary = curve_summary(pd.DataFrame(rows)).set_index(["set", "step"])
    assert summary.loc[("edits", 0), "flip_ratio"] == 0.0
    assert summary.loc[("edits", 2), ["flips", "retained_at_start"]].tolist() == [1, 2]
    assert summary.loc[("edits", 2), "flip_ratio"] == 0.5
    assert summary.loc[("edits", 2), "retained"] == pytest.approx(200 / 3)
    assert summary.loc[("edits", 2), "margin_pp"] == pytest.approx(100 * (0.4 - 0.2 + 0.4) / 3)
    assert summary.loc[("control", 2), "flip_ratio"] == 0.5
    assert summary.loc[("control", 2), "retained"] == 50.0
