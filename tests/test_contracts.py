"""One contract test matrix per plug-in registry, run over EVERY registered entry (as PEFT runs one matrix over
its tuners): editors, fine-tuning methods, downstream tasks and executors. A new registration is tested here
without writing a test for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from editdecay.data import TASKS, load_task
from editdecay.data.tasks import BUILTIN_TASK
from editdecay.editing import EDITORS, EditContext, Editor, StatsStore, WeightPatch, build_editor
from editdecay.experiments import EXECUTORS, make_executor
from editdecay.finetuning import FinetuneSpec, finetune, load_finetuned
from editdecay.finetuning.methods import FINETUNE_METHODS
from editdecay.models import DtypeResolver, block, num_blocks
from test_edit_support import capital_requests, fast_hparams, same_state, state_of, write_corpus
from tiny import tiny_model, tiny_tokenizer

# --- editors -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


# Settings that make each built-in editor cheap on a tiny model; a new editor without an entry gets {}.
TINY_HPARAMS = {
    "memit": fast_hparams,
    "alphaedit": fast_hparams,
    "rome": lambda corpus: fast_hparams(corpus, layers=[2], batch_size=1),
    "ftl": lambda _corpus: {"layers": [2], "num_steps": 3, "lr": 1e-2, "norm_constraint": 1e-2},
    "mend": lambda _corpus: {
        "layers": [2, 3],
        "train_data": "builtin",
        "train_steps": 3,
        "train_batch_size": 2,
        "hidden": 16,
        "batch_size": 2,
    },
}


@pytest.mark.parametrize("name", sorted(EDITORS))
def test_editor_contract(name: str, corpus: Path, tmp_path: Path) -> None:
    hparams = TINY_HPARAMS[name](corpus) if name in TINY_HPARAMS else {"layers": [1, 2]}
    check_editor_contract(name, hparams, tmp_path)


def check_editor_contract(name: str, hparams: dict, tmp_path: Path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    editor = build_editor(name, hparams, dtypes=DtypeResolver(forced="float32"))
    assert isinstance(editor, Editor) and editor.name == name
    assert isinstance(
        EDITORS[name].hparams_class.from_dict(editor.resolved_hparams(model).to_dict()), EDITORS[name].hparams_class
    )
    before = state_of(model)
    patch = editor.edit(
        model,
        tok,
        capital_requests(3),
        EditContext(stats=StatsStore(tmp_path / "stats"), artifacts=tmp_path / "editors"),
    )
    # The caller's model is untouched; the patch changes exactly the parameters its manifest declares.
    assert same_state(before, state_of(model))
    assert sorted(patch.deltas) == sorted(patch.manifest["parameters"])
    assert patch.manifest["editor"] == name and patch.manifest["request_ids"] == ["0", "1", "2"]
    patch.apply(model)
    changed = {n for n, p in model.state_dict().items() if not torch.equal(p, before[n])}
    assert changed == set(patch.deltas)
    patch.revert(model)
    assert same_state(before, state_of(model))
    # Round trip: the saved patch is the same patch.
    loaded = WeightPatch.load(patch.save(tmp_path / "patch"))
    assert loaded.patch_id == patch.patch_id and set(loaded.deltas) == set(patch.deltas)
    assert all(torch.equal(loaded.deltas[n], patch.deltas[n]) for n in patch.deltas)
    saved = {k: v for k, v in loaded.manifest.items() if k != "patch_id"}
    assert saved == json.loads(json.dumps(patch.manifest))
    # An edit that fails at its last block pass, when the weights are already edited, leaves the model as it was.
    blocks = [block(model, layer) for layer in range(num_blocks(model))]
    calls: list[bool] = []
    handles = [b.register_forward_hook(lambda *_: calls.append(True)) for b in blocks]
    editor.edit(
        model,
        tok,
        capital_requests(3),
        EditContext(stats=StatsStore(tmp_path / "stats"), artifacts=tmp_path / "editors"),
    )
    for handle in handles:
        handle.remove()
    total, calls = len(calls), []

    def crash_at_the_end(*_: object) -> None:
        calls.append(not same_state(before, state_of(model)))
        if len(calls) == total:
            raise RuntimeError("simulated crash")

    if total == 0:
        return  # an editor that runs no forward pass cannot fail in one
    handles = [b.register_forward_hook(crash_at_the_end) for b in blocks]
    with pytest.raises(RuntimeError, match="simulated crash"):
        editor.edit(
            model,
            tok,
            capital_requests(3),
            EditContext(stats=StatsStore(tmp_path / "stats"), artifacts=tmp_path / "editors"),
        )
    for handle in handles:
        handle.remove()
    assert calls[-1], "the crash came before any weight was edited: the test would prove nothing"
    assert same_state(before, state_of(model))


# --- fine-tuning methods -------------------------------------------------------------------------------------

EXAMPLES_FILE = [
    {"instruction": f"Name the colour of item {i}.", "input": "", "output": f"Colour {i % 3}."} for i in range(8)
]


@pytest.mark.parametrize("method", sorted(FINETUNE_METHODS))
def test_finetune_method_contract(method: str, tmp_path: Path) -> None:
    check_method_contract(method, tmp_path)


def check_method_contract(method: str, tmp_path: Path) -> None:
    from editdecay.data import load_corpus

    path = tmp_path / "corpus.json"
    path.write_text(json.dumps(EXAMPLES_FILE))
    examples = load_corpus(str(path))
    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    before = state_of(model)
    spec = FinetuneSpec(
        method=method,
        layers=(1,),
        max_steps=2,
        batch_size=4,
        lr=1e-2,
        compute_dtype="float32",
        cutoff_len=64,
        warmup_ratio=0.0,
        dropout=0.0,
    )
    result = finetune(model, tok, examples, spec, out_dir=tmp_path / "out", progress=False)
    assert same_state(before, state_of(model))  # the caller's weights are never touched
    assert result.method == method and result.manifest["steps"] == 2
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    unmerged, merged = load_finetuned(model, result), load_finetuned(model, result, merge=True)
    with torch.no_grad():
        torch.testing.assert_close(unmerged(ids).logits, merged(ids).logits, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, model(ids).logits)
    # Only the chosen block changed (merged weights), and the precision is the base model's.
    changed = {n.split(".")[2] for n, p in merged.state_dict().items() if n in before and not torch.equal(p, before[n])}
    assert changed == {"1"}
    assert {p.dtype for p in merged.parameters()} == {torch.float32}


# --- downstream tasks ----------------------------------------------------------------------------------------


def _record(spec, answer_index: int) -> dict[str, str]:
    labels = spec.vocabulary[: max(2, min(len(spec.vocabulary), 4))]
    if spec.option_marker is None:
        body = "Please answer: is water wet?"
    else:
        options = " ".join(f"{spec.option_marker}{i + 1}: choice {i + 1}." for i in range(len(labels)))
        body = f"Please choose the correct answer to the question: pick one _ now\n\n{options}"
    return {
        "instruction": f"{body}\n\nAnswer format: {'/'.join(labels)}",
        "input": "",
        "output": f"the correct answer is {labels[answer_index]}",
        "answer": labels[answer_index],
    }


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_contract(name: str, tmp_path: Path) -> None:
    spec = TASKS[name]
    if name == BUILTIN_TASK:
        items = load_task(name, None, limit=4)
    else:
        (tmp_path / name).mkdir()
        (tmp_path / name / "test.json").write_text(json.dumps([_record(spec, 1), _record(spec, 0)]))
        items = load_task(name, tmp_path)
        assert [item.answer for item in items] == [spec.vocabulary[1], spec.vocabulary[0]]
    assert len(items) >= 2
    for item in items:
        assert item.answer in item.labels and len(item.options) == len(item.labels)
        assert spec.pattern.search(f"the correct answer is {item.answer}").group(0).lower() == item.answer


# --- executors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXECUTORS))
def test_executor_contract(name: str, tmp_path: Path) -> None:
    executor = make_executor(name)
    assert executor.name == name and callable(executor.run)
    # An empty grid is a no-op for every executor (results equal to the local executor's: tests/test_ray.py).
    if name == "local":
        assert executor.run([], tmp_path / "store", tmp_path / "runs") == []
