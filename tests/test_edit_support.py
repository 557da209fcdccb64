"""Shared helpers for the editing tests (tiny corpus, requests, fast hyperparameters), and their own checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import SHARED_DATA
from editdecay.data import EditRequest, LocalityPrompt, load_edit_requests
from editdecay.editing import EditContext, StatsStore

_SENTENCES = [
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.",
    "Danielle Darrieux speaks French. The mother tongue of Thomas Joannes Stieltjes is Dutch.",
    "Michael Jordan plays basketball. Lionel Messi plays soccer. Roger Federer plays tennis.",
    "Toyota is headquartered in Tokyo. Apple is based in Cupertino. The Eiffel Tower is in Paris.",
    "English German Japanese Chinese Berlin London Beijing Toronto piano guitar violin physicist actor",
]


def write_corpus(directory: Path, documents: int = 60) -> Path:
    """A small plain-text corpus (documents separated by blank lines), ~100 tiny-tokenizer tokens each."""
    path = directory / "corpus.txt"
    docs = [f"{i}. " + " ".join(_SENTENCES[(i + j) % len(_SENTENCES)] for j in range(2)) for i in range(documents)]
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path


def capital_requests(n: int = 4) -> list[EditRequest]:
    facts = [
        ("France", "Rome", "Paris"),
        ("Italy", "Berlin", "Rome"),
        ("Spain", "Tokyo", "Madrid"),
        ("Michael Jordan", "piano", "basketball"),
        ("Toyota", "London", "Tokyo"),
        ("Apple", "Beijing", "Cupertino"),
    ]
    return [
        EditRequest(
            str(i),
            subject,
            "The capital of {} is" if i < 3 else "{} is associated with",
            new,
            true,
            paraphrase_prompts=(f"Where is {subject}? It is in",),
            neighborhood=(LocalityPrompt("The capital of Germany is", "Berlin"),),
        )
        for i, (subject, new, true) in enumerate(facts[:n])
    ]


def fast_hparams(corpus: Path, **overrides: object) -> dict[str, object]:
    """Cheap settings for tiny models: a file corpus, few steps, layers 1-2, a scale-matched lambda."""
    return {
        "layers": [1, 2],
        "mom2_dataset": str(corpus),
        "mom2_n_tokens": 2500,
        "mom2_max_length": 64,
        "v_num_grad_steps": 6,
        "context_template_count": 2,
        "context_template_tokens": 5,
        "mom2_update_weight": 10.0,
        **overrides,
    }


def real_requests(shared: Path | None, n: int) -> list[EditRequest]:
    """The built-in suite when it exists, else CounterFact from ../shared/data, else hand-made capitals."""
    try:
        return load_edit_requests("builtin", n)
    except (FileNotFoundError, ValueError):
        pass
    if shared is not None and (shared / "counterfact" / "counterfact-edit.json").is_file():
        return load_edit_requests(shared / "counterfact" / "counterfact-edit.json", n)
    return capital_requests(n)


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """One intra-op thread: tiny models gain nothing from more, and on a shared CPU thread hand-offs make
    their many small ops tens of times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_stats(tmp_path_factory) -> tuple[StatsStore, dict[str, object]]:
    """A statistics store shared by the SmolLM2 tests, and the corpus overrides they use: the shared
    Wikipedia dump when present (fast), else a small model-sampled corpus."""
    wiki = SHARED_DATA / "wikipedia"
    corpus = {"mom2_dataset": str(wiki), "mom2_n_tokens": 10_000} if wiki.is_dir() else {"mom2_n_tokens": 3000}
    return StatsStore(tmp_path_factory.mktemp("smollm2-stats")), corpus


def edit_success(loaded, editor, store: StatsStore, n: int = 10) -> int:
    """Edit n real requests into the (session-shared) model, count ES successes, and revert exactly."""
    from editdecay.evaluation import edit_metrics, score_edits

    model, tok = loaded
    requests = real_requests(SHARED_DATA if SHARED_DATA.is_dir() else None, n)
    patch = editor.edit(model, tok, requests, EditContext(stats=store, fingerprint=loaded.fingerprint))
    patch.apply(model, fingerprint=loaded.fingerprint)
    try:
        per_edit = edit_metrics(score_edits(model, tok, requests, progress=False))
    finally:
        patch.revert(model)
    print(per_edit[["case_id", "es", "ps", "ns", "target_new", "answer"]].to_string())
    return int(per_edit["es"].sum())


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_support_corpus_and_requests(tmp_path) -> None:
    corpus = write_corpus(tmp_path, documents=3)
    assert corpus.read_text().count("\n\n") == 2
    requests = capital_requests(4)
    assert [r.prompt for r in requests[:2]] == ["The capital of France is", "The capital of Italy is"]
    assert len({r.case_id for r in requests}) == 4
