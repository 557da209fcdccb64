"""Text sources for second-moment statistics (the sampling of `model-sampled` text is editing/sampled_text.py).

A corpus spec is one of:
- `model-sampled` (the offline default): text sampled from the model itself (pure sampling, fixed seed,
  starting from BOS or, without one, EOS). Its identity is the model fingerprint plus the seed.
- a local path: a `.txt` file (documents separated by blank lines), a `.json`/`.jsonl` file (a `text`
  field per record, or a list of strings), a WikiExtractor file (`<doc ...> ... </doc>`), or a directory
  of any of these (every file below it, in sorted path order).
- `hf:NAME[:CONFIG[:SPLIT]]`, or the shorthands `wikipedia` / `wikitext-103`: a Hugging Face dataset
  (needs network access and `pip install datasets`), streamed, `text` column.
Every corpus has a `corpus_id` naming its content (local files: a hash of their bytes) for cache keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_SAMPLED = "model-sampled"
HF_SHORTHANDS: dict[str, tuple[str, str | None, str]] = {
    "wikipedia": ("wikimedia/wikipedia", "20231101.en", "train"),
    "wikitext-103": ("Salesforce/wikitext", "wikitext-103-raw-v1", "train"),
}
_DOC_RE = re.compile(r"<doc\b[^>]*>(.*?)</doc>", re.DOTALL)


@dataclass(frozen=True)
class TextCorpus:
    """Documents as strings, read lazily in a fixed order."""

    spec: str
    corpus_id: str

    def documents(self) -> Iterator[str]:
        if self.spec.startswith("hf:") or self.spec in HF_SHORTHANDS:
            yield from _hf_documents(self.spec)
            return
        for path in _files(Path(self.spec)):
            yield from _file_documents(path)


SAMPLING_BATCH = 128  # sequences sampled together; part of the corpus identity (it shapes the random stream)
SAMPLER_VERSION = 2  # bumped whenever the sampling procedure changes the text it produces


@dataclass(frozen=True)
class SampledCorpus:
    """Sequences sampled from the model being measured (needs the model: editing/sampled_text.py)."""

    seed: int = 0

    @property
    def corpus_id(self) -> str:
        return f"{MODEL_SAMPLED}:seed={self.seed}:batch={SAMPLING_BATCH}:v{SAMPLER_VERSION}"


Corpus = TextCorpus | SampledCorpus


def open_corpus(spec: str, *, seed: int = 0) -> Corpus:
    """Resolve a corpus spec (module docstring) without reading it all; errors name the spec."""
    if spec == MODEL_SAMPLED:
        return SampledCorpus(seed=seed)
    if spec.startswith("hf:") or spec in HF_SHORTHANDS:
        return TextCorpus(
            spec, spec if spec.startswith("hf:") else "hf:" + ":".join(p for p in HF_SHORTHANDS[spec] if p)
        )
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Statistics corpus {spec!r} is not '{MODEL_SAMPLED}', a Hugging Face dataset "
            f"('hf:NAME[:CONFIG[:SPLIT]]', {', '.join(HF_SHORTHANDS)}) or an existing file/directory."
        )
    files = _files(path)
    if not files:
        raise ValueError(f"Statistics corpus {spec!r}: no readable text files found.")
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return TextCorpus(str(path), f"files:{path.name}:{digest.hexdigest()[:16]}")


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def _file_documents(path: Path) -> Iterator[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    head = text.lstrip()[:200]
    if head.startswith("<doc"):
        for match in _DOC_RE.finditer(text):
            body = match.group(1).strip()
            # WikiExtractor repeats the title as the first line; keep it (it is part of the article).
            if body:
                yield body
    elif path.suffix in (".json", ".jsonl"):
        yield from _json_documents(path, text)
    else:
        for block in re.split(r"\n\s*\n", text):
            if block.strip():
                yield block.strip()


def _json_documents(path: Path, text: str) -> Iterator[str]:
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    for index, record in enumerate(records):
        value = record if isinstance(record, str) else record.get("text") if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise ValueError(f"{path}, record {index}: expected a string or an object with a 'text' string.")
        if value.strip():
            yield value


def _hf_documents(spec: str) -> Iterator[str]:
    name, config, split = HF_SHORTHANDS[spec] if spec in HF_SHORTHANDS else _parse_hf(spec)
    try:
        import datasets
    except ImportError as err:
        raise RuntimeError(
            f"Corpus {spec!r} needs the `datasets` package (pip install datasets) and network access; "
            f"offline, use '{MODEL_SAMPLED}' or a local text/WikiExtractor directory."
        ) from err
    stream = datasets.load_dataset(name, config, split=split, streaming=True)
    for row in stream:
        text = row.get("text", "")
        if isinstance(text, str) and text.strip():
            yield text


def _parse_hf(spec: str) -> tuple[str, str | None, str]:
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise ValueError(f"Bad Hugging Face corpus spec {spec!r}; expected hf:NAME[:CONFIG[:SPLIT]].")
    return parts[0], (parts[1] or None) if len(parts) > 1 else None, parts[2] if len(parts) > 2 else "train"
