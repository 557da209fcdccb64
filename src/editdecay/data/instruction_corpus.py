"""Fine-tuning corpora: LLM-Adapters/Alpaca instruction files, HotpotQA, JSONL {prompt, response}, built-in."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from editdecay.data.builtin_corpus import BUILTIN_CORPUS_VERSION, builtin_corpus_records
from editdecay.data.edit_requests import read_json_records
from editdecay.data.records import DataFormatError

CorpusFormat = Literal["auto", "alpaca", "hotpotqa", "prompt-response"]
CORPUS_FORMATS: tuple[str, ...] = ("auto", "alpaca", "hotpotqa", "prompt-response")
BUILTIN_CORPUS = "builtin"

_PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


@dataclass(frozen=True)
class InstructionExample:
    """One instruction-tuning example in the LLM-Adapters format; `answer` is the gold label if any."""

    instruction: str
    input: str
    output: str
    answer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_prompt(example: InstructionExample, with_response: bool) -> str:
    """The Alpaca prompt (docs/algorithms.md §5); without the response it ends right after '### Response:\\n'."""
    if example.input:
        text = (
            f"{_PREAMBLE_WITH_INPUT}\n\n### Instruction:\n{example.instruction}\n\n"
            f"### Input:\n{example.input}\n\n### Response:\n"
        )
    else:
        text = f"{_PREAMBLE}\n\n### Instruction:\n{example.instruction}\n\n### Response:\n"
    return text + example.output if with_response else text


def load_corpus(
    source: str | Path,
    *,
    max_examples: int | None = None,
    seed: int = 0,
    fmt: CorpusFormat = "auto",
) -> list[InstructionExample]:
    """Load and validate a fine-tuning corpus.

    `source` is `builtin`, a JSON/JSONL file, or a directory (every *.json / *.jsonl below it, in sorted
    path order, each file's format detected separately when `fmt` is `auto`). `max_examples` keeps a
    seeded random subset (in corpus order); asking for more examples than the corpus has is an error.
    """
    if fmt not in CORPUS_FORMATS:
        raise ValueError(f"Unknown corpus format {fmt!r}; choose one of {', '.join(CORPUS_FORMATS)}.")
    examples = (
        _builtin_examples()
        if str(source) == BUILTIN_CORPUS
        else [ex for path in _corpus_files(Path(source)) for ex in _load_file(path, fmt)]
    )
    if max_examples is None:
        return examples
    if max_examples < 1:
        raise ValueError(f"max_examples must be positive, got {max_examples}")
    if max_examples > len(examples):
        raise ValueError(
            f"Asked for {max_examples} examples but corpus {source} has only {len(examples)}; "
            "lower --max-examples or leave it out to use the whole corpus."
        )
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_examples))
    return [examples[i] for i in keep]


def corpus_id(source: str | Path, max_examples: int | None = None, seed: int = 0, fmt: CorpusFormat = "auto") -> str:
    """Stable identity of `load_corpus(source, max_examples=..., seed=..., fmt=...)` for cache keys.

    Files are identified by content (sha256), not by path or modification time; the seed only counts
    when `max_examples` subsamples.
    """
    digest = hashlib.blake2b(digest_size=8)
    if str(source) == BUILTIN_CORPUS:
        name = f"builtin-v{BUILTIN_CORPUS_VERSION}"
    else:
        root = Path(source)
        name = root.stem or "corpus"
        for path in _corpus_files(root):
            rel = path.name if path == root else path.relative_to(root).as_posix()
            digest.update(f"{rel}:{hashlib.sha256(path.read_bytes()).hexdigest()};".encode())
    digest.update(f"{name}|{fmt}|{max_examples}|{seed if max_examples is not None else ''}".encode())
    return f"{name}-{digest.hexdigest()}"


def _builtin_examples() -> list[InstructionExample]:
    return [InstructionExample(r["instruction"], "", r["output"], r["answer"]) for r in builtin_corpus_records()]


def _corpus_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl"))
        if not files:
            raise FileNotFoundError(f"Corpus directory {source} holds no .json or .jsonl files.")
        return files
    raise FileNotFoundError(f"No corpus at {source}: give 'builtin', a .json/.jsonl file, or a directory of them.")


def _load_file(path: Path, fmt: CorpusFormat) -> list[InstructionExample]:
    records = read_json_records(path)
    name = str(path)
    if not records:
        raise DataFormatError(name, None, None, "the file holds no records")
    used = _detect_format(records[0], name) if fmt == "auto" else fmt
    parse = _PARSERS[used]
    return [parse(record, name, index) for index, record in enumerate(records)]


def _detect_format(first: dict[str, Any], name: str) -> str:
    if "instruction" in first and "output" in first:
        return "alpaca"
    if "question" in first and "answer" in first:
        return "hotpotqa"
    if "prompt" in first and "response" in first:
        return "prompt-response"
    raise DataFormatError(
        name,
        0,
        None,
        f"unrecognised corpus format (keys {sorted(first)}); expected LLM-Adapters/Alpaca "
        "(instruction, input, output, answer), HotpotQA (question, answer, context) or {prompt, response}",
    )


def _string(record: dict[str, Any], key: str, source: str, index: int, *, required: bool = True) -> str:
    if key not in record or record[key] is None:
        if required:
            raise DataFormatError(source, index, key, "missing")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise DataFormatError(source, index, key, f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise DataFormatError(source, index, key, "empty or whitespace only")
    return value


def _label(record: dict[str, Any], key: str, source: str, index: int) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataFormatError(source, index, key, f"expected a string or a number, got {type(value).__name__}")
    return str(value)


def _parse_alpaca(record: dict[str, Any], source: str, index: int) -> InstructionExample:
    return InstructionExample(
        instruction=_string(record, "instruction", source, index),
        input=_string(record, "input", source, index, required=False),
        output=_string(record, "output", source, index),
        answer=_label(record, "answer", source, index),
    )


def _parse_prompt_response(record: dict[str, Any], source: str, index: int) -> InstructionExample:
    return InstructionExample(
        _string(record, "prompt", source, index), "", _string(record, "response", source, index), None
    )


def _parse_hotpotqa(record: dict[str, Any], source: str, index: int) -> InstructionExample:
    """Question as the instruction, the supporting-fact sentences (all paragraphs if none) as the input."""
    question = _string(record, "question", source, index)
    answer = _string(record, "answer", source, index)
    paragraphs = _hotpot_paragraphs(record.get("context", []), source, index)
    wanted = _hotpot_supporting(record.get("supporting_facts", []), source, index)
    lines = []
    for title, sentences in paragraphs:
        chosen = [s for i, s in enumerate(sentences) if (title, i) in wanted] if wanted else sentences
        if chosen:
            lines.append(f"{title}: {' '.join(s.strip() for s in chosen)}")
    return InstructionExample(question, "\n".join(lines), answer, answer)


def _hotpot_paragraphs(context: Any, source: str, index: int) -> list[tuple[str, list[str]]]:
    # Original release: [[title, [sentences]], ...]; Hugging Face datasets: {"title": [...], "sentences": [...]}.
    if isinstance(context, dict):
        context = list(zip(context.get("title", []), context.get("sentences", []), strict=False))
    if not isinstance(context, list):
        raise DataFormatError(source, index, "context", "expected a list of [title, sentences] pairs")
    paragraphs = []
    for item in context:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], list)
            or not all(isinstance(s, str) for s in item[1])
        ):
            raise DataFormatError(source, index, "context", f"expected [title, [sentences]], got {item!r:.80}")
        paragraphs.append((item[0], list(item[1])))
    return paragraphs


def _hotpot_supporting(facts: Any, source: str, index: int) -> set[tuple[str, int]]:
    if isinstance(facts, dict):
        facts = list(zip(facts.get("title", []), facts.get("sent_id", []), strict=False))
    if not isinstance(facts, list):
        raise DataFormatError(source, index, "supporting_facts", "expected a list of [title, sentence index]")
    wanted = set()
    for item in facts:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], int)
        ):
            raise DataFormatError(source, index, "supporting_facts", f"expected [title, int], got {item!r:.80}")
        wanted.add((item[0], item[1]))
    return wanted


_PARSERS: dict[str, Callable[[dict[str, Any], str, int], InstructionExample]] = {
    "alpaca": _parse_alpaca,
    "hotpotqa": _parse_hotpotqa,
    "prompt-response": _parse_prompt_response,
}
