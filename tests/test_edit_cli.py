"""`editdecay stats` and `editdecay edit` on a tiny model saved to disk: outputs and clear errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from typer.testing import CliRunner

import test_edit_support
from editdecay.cli import app
from editdecay.editing import WeightPatch
from test_edit_support import write_corpus
from tiny import tiny_model, tiny_tokenizer

single_thread = test_edit_support.single_thread  # autouse: tiny models run fastest on one thread


@pytest.fixture
def tiny_dir(tmp_path):
    path = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer(add_bos=True).save_pretrained(path)
    return path


@pytest.fixture
def edits_file(tmp_path):
    records = [
        {"case_id": f"c{i}", "subject": s, "template": "The capital of {} is", "target_new": new, "target_true": true}
        for i, (s, new, true) in enumerate([("France", "Rome", "Paris"), ("Italy", "Berlin", "Rome")])
    ]
    path = tmp_path / "edits.json"
    path.write_text(json.dumps(records))
    return path


def test_edit_writes_a_patch_and_a_summary(tmp_path, tiny_dir, edits_file) -> None:
    corpus = write_corpus(tmp_path)
    out = tmp_path / "out"
    args = [
        "edit",
        "--model",
        str(tiny_dir),
        "--editor",
        "alphaedit",
        "--dataset",
        str(edits_file),
        "--n",
        "2",
        "--out",
        str(out),
        "--layers",
        "1-2",
        "--corpus",
        str(corpus),
        "--tokens",
        "2500",
        "--stats-dir",
        str(tmp_path / "stats"),
        "--set",
        "v_num_grad_steps=3",
        "--set",
        "mom2_max_length=64",
        "--set",
        "context_template_count=1",
        "--editor-seed",
        "5",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Edited 2 requests with alphaedit into layers [1, 2]" in result.output
    patch = WeightPatch.load(out / "patch")
    assert patch.manifest["protocol"]["seed"] == 5 and patch.request_ids == ["c0", "c1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["patch_id"] == patch.patch_id and summary["layers"] == [1, 2]
    assert set(summary["update_norms"]) == {"1", "2"}
    assert {"statistics", "targets", "solve", "total"} <= set(summary["timings"])
    assert summary["hparams"]["v_num_grad_steps"] == 3 and summary["nullspace"]["1"]["total"] == 64

    stats = CliRunner().invoke(
        app,
        [
            "stats",
            "--model",
            str(tiny_dir),
            "--layers",
            "1,2",
            "--corpus",
            str(corpus),
            "--tokens",
            "2500",
            "--max-length",
            "64",
            "--stats-dir",
            str(tmp_path / "stats"),
        ],
    )
    assert stats.exit_code == 0, stats.output
    assert "layer   1: 2500 tokens" in stats.output and "layer   2: 2500 tokens" in stats.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n", "5"], "Asked for 5 edit requests"),
        (["--editor", "grace"], "choose one of memit, alphaedit"),
        (["--layers", "1,9"], "outside the model"),
        (["--set", "v_lr"], "expected key=value"),
        (["--set", "v_lr=-1"], "v_lr must be > 0"),
    ],
)
def test_bad_input_is_reported_without_a_traceback(tmp_path, tiny_dir, edits_file, extra, message) -> None:
    args = [
        "edit",
        "--model",
        str(tiny_dir),
        "--dataset",
        str(edits_file),
        "--out",
        str(tmp_path / "out"),
        "--corpus",
        str(write_corpus(tmp_path)),
        "--stats-dir",
        str(tmp_path / "stats"),
        *extra,
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_stats_defaults_are_the_statistics_edit_uses(tmp_path, tiny_dir, edits_file) -> None:
    """Without --layers/--tokens/--max-length, `stats` computes exactly what `edit` then loads."""
    corpus, stats_dir = write_corpus(tmp_path, documents=150), tmp_path / "stats"
    stats = CliRunner().invoke(
        app, ["stats", "--model", str(tiny_dir), "--corpus", str(corpus), "--stats-dir", str(stats_dir)]
    )
    assert stats.exit_code == 0, stats.output
    computed = sorted(stats_dir.rglob("*.safetensors"))
    assert computed
    edit = CliRunner().invoke(
        app,
        [
            "edit",
            "--model",
            str(tiny_dir),
            "--dataset",
            str(edits_file),
            "--n",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--corpus",
            str(corpus),
            "--stats-dir",
            str(stats_dir),
            "--set",
            "v_num_grad_steps=2",
        ],
    )
    assert edit.exit_code == 0, edit.output
    assert sorted(stats_dir.rglob("*.safetensors")) == computed  # every statistic the edit needed was cached


class _RecordingEditor:
    """Stands in for build_editor's result: records what `edit` is asked to do, returns a one-delta patch."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def edit(self, model, tokenizer, requests, context) -> WeightPatch:
        self.calls.append({"requests": list(requests), "seed": context.seed})
        fingerprint = context.fingerprint
        name = "model.layers.1.mlp.down_proj.weight"
        delta = torch.zeros(model.get_parameter(name).shape)
        return WeightPatch(
            {name: delta},
            {
                "base_fingerprint": fingerprint,
                "layers": [1],
                "request_ids": [r.case_id for r in requests],
                "update_norms": {"1": 0.0},
                "timings": {},
                "statistics": {},
                "batches": [],
                "hparams": {},
            },
        )


@pytest.fixture
def recording_editor(monkeypatch) -> _RecordingEditor:
    import editdecay.editing

    editor = _RecordingEditor()
    monkeypatch.setattr(editdecay.editing, "build_editor", lambda *args, **kwargs: editor)
    return editor


@pytest.fixture
def zsre_file(tmp_path):
    records = [
        {
            "case_id": i,
            "subject": s,
            "src": f"What is the capital of {s}?",
            "answers": [gold],
            "alt": alt,
            "rephrase": f"Which city is the capital of {s}?",
            "loc": "nq question: who wrote hamlet",
            "loc_ans": "Shakespeare",
        }
        for i, (s, gold, alt) in enumerate(
            [
                ("France", "Paris", "Rome"),
                ("Italy", "Rome", "Berlin"),
                ("Spain", "Madrid", "Tokyo"),
                ("Japan", "Tokyo", "Paris"),
            ]
        )
    ]
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(records))
    return path


def test_edit_seed_samples_requests_like_evaluate(tmp_path, tiny_dir, zsre_file, recording_editor) -> None:
    from editdecay.data import load_edit_requests

    base = ["edit", "--model", str(tiny_dir), "--dataset", str(zsre_file), "--n", "2"]
    first = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "first")])
    sampled = CliRunner().invoke(app, [*base, "--seed", "3", "--editor-seed", "7", "--out", str(tmp_path / "s")])
    assert first.exit_code == 0, first.output
    assert sampled.exit_code == 0, sampled.output
    [default_call, seeded_call] = recording_editor.calls
    assert [r.case_id for r in default_call["requests"]] == ["0", "1"] and default_call["seed"] == 0
    expected = load_edit_requests(zsre_file, 2, seed=3)
    assert [r.case_id for r in expected] == ["1", "2"]  # a sample, not the first two
    assert seeded_call["requests"] == expected and seeded_call["seed"] == 7
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert (summary["seed"], summary["editor_seed"], summary["zsre_target"]) == (3, 7, "answers")
    old = CliRunner().invoke(app, [*base, "--sample-seed", "3", "--out", str(tmp_path / "old")])
    assert old.exit_code == 2 and "No such option" in old.output


def test_edit_zsre_target_is_passed_to_the_loader(tmp_path, tiny_dir, zsre_file, recording_editor) -> None:
    base = ["edit", "--model", str(tiny_dir), "--dataset", str(zsre_file), "--n", "1"]
    assert CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a")]).exit_code == 0
    assert CliRunner().invoke(app, [*base, "--zsre-target", "alt", "--out", str(tmp_path / "b")]).exit_code == 0
    [answers, alt] = [call["requests"][0] for call in recording_editor.calls]
    assert (answers.target_new, answers.target_true) == ("Paris", None)
    assert (alt.target_new, alt.target_true) == ("Rome", "Paris")
    bad = CliRunner().invoke(app, [*base, "--zsre-target", "gold", "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "use answers or alt" in bad.output
    assert len(recording_editor.calls) == 2


def test_set_keys_are_checked_and_hparams_files_stay_lenient(
    tmp_path, tiny_dir, zsre_file, monkeypatch, caplog
) -> None:
    import editdecay.editing

    real_build, recording, built = editdecay.editing.build_editor, _RecordingEditor(), []

    def build(*args, **kwargs):
        built.append(real_build(*args, **kwargs))  # the real editor validates the overrides
        return recording

    monkeypatch.setattr(editdecay.editing, "build_editor", build)
    hparams = tmp_path / "memit-gpt2-xl.json"
    hparams.write_text(
        json.dumps(
            {
                "alg_name": "MEMIT",
                "model_name": "gpt2-xl",
                "v_lr": 0.25,
                "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj",
                "legacy_knob": 3,
            }
        )
    )
    base = ["edit", "--model", str(tiny_dir), "--dataset", str(zsre_file), "--n", "1"]
    with caplog.at_level(logging.INFO, logger="editdecay.editing.hparams"):
        ok = CliRunner().invoke(app, [*base, "--hparams", str(hparams), "--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    assert built[0].overrides["v_lr"] == 0.25 and len(recording.calls) == 1
    assert "ignoring alg_name, model_name, rewrite_module_tmp" in caplog.text and "legacy_knob" in caplog.text
    bad = CliRunner().invoke(app, [*base, "--set", "v_lrr=1", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "unknown memit hyperparameter v_lrr" in " ".join(bad.output.split())
    assert len(built) == 1 and not (tmp_path / "bad").exists()


def test_edit_with_the_gradient_editors_and_their_own_errors(tmp_path, tiny_dir, edits_file) -> None:
    """FT-L and MEND from the CLI: a patch and a summary with the target NLL; statistic flags are refused."""
    base = ["edit", "--model", str(tiny_dir), "--dataset", str(edits_file), "--n", "2"]
    ftl = CliRunner().invoke(
        app, [*base, "--editor", "ftl", "--out", str(tmp_path / "ftl"), "--set", "num_steps=3", "--layers", "2"]
    )
    assert ftl.exit_code == 0, ftl.output
    assert "mean target NLL:" in ftl.output
    summary = json.loads((tmp_path / "ftl" / "summary.json").read_text())
    assert summary["target_nll"]["after"] < summary["target_nll"]["before"] and summary["layers"] == [2]
    mend = CliRunner().invoke(
        app,
        [*base, "--editor", "mend", "--out", str(tmp_path / "mend"), "--artifacts-dir", str(tmp_path / "editors")]
        + [arg for kv in ("train_data=builtin", "train_steps=2", "hidden=8") for arg in ("--set", kv)],
    )
    assert mend.exit_code == 0, mend.output
    assert WeightPatch.load(tmp_path / "mend" / "patch").manifest["training"]["steps"] == 2
    assert (tmp_path / "editors" / "mend").is_dir()
    refused = CliRunner().invoke(app, [*base, "--editor", "ftl", "--out", str(tmp_path / "x"), "--tokens", "100"])
    assert refused.exit_code == 2 and "ftl uses no second-moment statistic" in " ".join(refused.output.split())
    untrained = CliRunner().invoke(app, [*base, "--editor", "mend", "--out", str(tmp_path / "y")])
    assert untrained.exit_code == 2 and "MEND needs training records" in " ".join(untrained.output.split())
