"""Second-moment statistics C_l = E[k k^T] at the MLP output projection input (docs/algorithms.md §1.6).

All requested layers are collected in ONE forward pass over the corpus (a hook on each layer's output
projection, the forward stopped after the last one). `StatsStore` caches each layer's statistic on disk,
keyed by everything it depends on, and verifies the key on load, so a statistic of one model can never be
used for another.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from editdecay.data.stats_text import Corpus, SampledCorpus, TextCorpus, open_corpus
from editdecay.editing.keyed_tensors import format_tag, read_keyed_tensors, write_keyed_tensors
from editdecay.editing.sampled_text import sample_sequences
from editdecay.editing.subject import pad_right
from editdecay.locking import file_lock, locked_compute
from editdecay.models import arch_for, check_layers, edit_matrix, mlp_out, model_fingerprint
from editdecay.models.hooks import record, run_until

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOKENS_PER_BATCH = 4096
# Formats of the cache files written below, part of their keys and paths: bump when the code that writes
# them (or computes what they hold) changes, so files of older code are never read.
STATS_FORMAT = "stats/1"
SAMPLED_FORMAT = "sampled/1"


class StatisticError(ValueError):
    """A statistic is unusable (non-finite, singular); the message names the layer and the fix."""


@dataclass(frozen=True)
class StatsKey:
    """Everything a layer statistic depends on."""

    fingerprint: str
    layer: int
    corpus_id: str
    n_tokens: int
    dtype: str
    max_length: int
    format: str = STATS_FORMAT

    def relative_path(self) -> Path:
        return self._directory() / f"layer{self.layer:03d}-{self._sample()}.safetensors"

    def group_path(self) -> Path:
        """Names the lock shared by all layers of this fingerprint, corpus, size, dtype, length and format."""
        return self._directory() / f"all-layers-{self._sample()}"

    def _directory(self) -> Path:
        corpus = re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.corpus_id)[:60]
        corpus_hash = hashlib.blake2b(self.corpus_id.encode(), digest_size=6).hexdigest()
        return Path(self.fingerprint) / f"{corpus}-{corpus_hash}"

    def _sample(self) -> str:
        return f"n{self.n_tokens}-len{self.max_length}-{self.dtype}.{format_tag(self.format)}"


@dataclass
class LayerStats:
    """The uncentered second moment of one layer's keys, with the sample it came from."""

    key: StatsKey
    moment: torch.Tensor  # (m, m), symmetric PSD
    n_tokens: int
    n_documents: int
    seconds: float

    def summary(self) -> dict[str, object]:
        return {
            "layer": self.key.layer,
            "corpus": self.key.corpus_id,
            "n_tokens": self.n_tokens,
            "n_documents": self.n_documents,
            "dtype": self.key.dtype,
            "max_length": self.key.max_length,
            "seconds": round(self.seconds, 2),
        }


def collect_stats(
    model: nn.Module,
    tokenizer,
    layers: list[int],
    corpus: Corpus,
    *,
    n_tokens: int,
    dtype: str = "float32",
    max_length: int = 128,
    fingerprint: str | None = None,
    sequences: list[torch.Tensor] | None = None,
) -> dict[int, LayerStats]:
    """E[k k^T] for every layer in one pass over exactly `n_tokens` non-padding tokens of `corpus`.

    `sequences` gives pre-tokenised sequences (used for a sampled corpus); otherwise documents are read
    from the corpus, tokenised with the tokenizer's special tokens, and truncated to `max_length`.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"Statistics dtype {dtype!r}: choose one of {sorted(_DTYPES)}.")
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    layers = sorted(set(layers))
    check_layers(model, layers)
    fingerprint = fingerprint or model_fingerprint(model)
    torch_dtype = _DTYPES[dtype]
    arch = arch_for(model)
    names = [arch.mlp_out_path(layer) for layer in layers]
    width = edit_matrix(model, layers[0]).shape[1]  # d_in: the key width
    sums = {layer: torch.zeros(width, width, dtype=torch_dtype) for layer in layers}
    device = next(model.parameters()).device
    batches = _batches(tokenizer, corpus, sequences, max_length, n_tokens)
    counted = documents = 0
    start = time.perf_counter()
    with (
        torch.no_grad(),
        record(model, names, "input") as keys,
        tqdm(total=n_tokens, desc=f"statistics layers {layers}", unit="tok", unit_scale=True) as bar,
    ):
        for input_ids, mask in batches:
            run_until(model, mlp_out(model, layers[-1]), input_ids=input_ids.to(device), attention_mask=mask.to(device))
            # Count exactly n_tokens: in the last batch only the first tokens still needed are kept.
            keep = _first_tokens(mask, n_tokens - counted)
            for layer, name in zip(layers, names, strict=True):
                k = keys[name][keep.to(device)].to("cpu", torch_dtype)
                sums[layer].addmm_(k.T, k)
            taken = int(keep.sum())
            counted += taken
            documents += int(keep.any(dim=1).sum())
            bar.update(taken)
            if counted >= n_tokens:
                break
    seconds = time.perf_counter() - start
    if counted < n_tokens:
        raise StatisticError(
            f"Corpus {corpus.corpus_id!r} holds only {counted} tokens (at most {max_length} per document); "
            f"asked for {n_tokens}. Use a larger corpus or fewer tokens."
        )
    log.info(
        "Statistics for layers %s: %d tokens from %d documents in %.1f s (%.0f tokens/s)",
        layers,
        counted,
        documents,
        seconds,
        counted / max(seconds, 1e-9),
    )
    result = {}
    for layer in layers:
        moment = sums[layer] / counted
        if not torch.isfinite(moment).all():
            raise StatisticError(
                f"The statistic of layer {layer} has non-finite entries (the model produced inf/NaN "
                "activations on the corpus). Check the model's dtype (use float32) and its weights."
            )
        key = StatsKey(fingerprint, layer, corpus.corpus_id, n_tokens, dtype, max_length)
        result[layer] = LayerStats(key, moment, counted, documents, seconds)
    return result


def _first_tokens(mask: torch.Tensor, budget: int) -> torch.Tensor:
    """The mask with only its first `budget` ones (row-major) kept."""
    flat = mask.reshape(-1).bool()
    keep = flat & (torch.cumsum(flat.long(), 0) <= budget)
    return keep.reshape(mask.shape)


def _batches(
    tokenizer, corpus: Corpus, sequences: list[torch.Tensor] | None, max_length: int, n_tokens: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    rows = max(1, TOKENS_PER_BATCH // max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pending: list[list[int]] = []
    for ids in _token_lists(tokenizer, corpus, sequences, max_length):
        pending.append(ids)
        if len(pending) == rows:
            yield pad_right(pending, pad)
            pending = []
    if pending:
        yield pad_right(pending, pad)


def _token_lists(
    tokenizer, corpus: Corpus, sequences: list[torch.Tensor] | None, max_length: int
) -> Iterator[list[int]]:
    if sequences is not None:
        for seq in sequences:
            yield seq[:max_length].tolist()
        return
    assert isinstance(corpus, TextCorpus)
    chunk: list[str] = []
    for doc in corpus.documents():
        chunk.append(doc)
        if len(chunk) == 64:
            yield from tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]
            chunk = []
    if chunk:
        yield from tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]


class StatsStore:
    """Disk cache of layer statistics under `root`, keyed by `StatsKey` (checked again on load)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def get(
        self,
        model: nn.Module,
        tokenizer,
        layers: list[int] | tuple[int, ...],
        *,
        corpus: str = "model-sampled",
        n_tokens: int,
        dtype: str = "float32",
        fingerprint: str | None = None,
        max_length: int = 128,
        seed: int = 0,
    ) -> dict[int, torch.Tensor]:
        """C_l for each layer: loaded when cached, otherwise collected (all missing layers in one pass)."""
        found = self.get_layer_stats(
            model,
            tokenizer,
            layers,
            corpus=corpus,
            n_tokens=n_tokens,
            dtype=dtype,
            fingerprint=fingerprint,
            max_length=max_length,
            seed=seed,
        )
        return {layer: stats.moment for layer, stats in found.items()}

    def get_layer_stats(
        self,
        model: nn.Module,
        tokenizer,
        layers: list[int] | tuple[int, ...],
        *,
        corpus: str = "model-sampled",
        n_tokens: int,
        dtype: str = "float32",
        fingerprint: str | None = None,
        max_length: int = 128,
        seed: int = 0,
    ) -> dict[int, LayerStats]:
        """Like `get`, with the sample sizes and timing of each statistic.

        Processes asking for the same statistics compute them once: the missing layers are collected under
        one lock per (fingerprint, corpus, n_tokens, dtype, max_length), held while they are checked again
        and computed, so no set of per-layer locks is ever taken (in any order) by two workers at once.
        """
        check_layers(model, list(layers))
        fingerprint = fingerprint or model_fingerprint(model)
        source = open_corpus(corpus, seed=seed)
        keys = {
            layer: StatsKey(fingerprint, layer, source.corpus_id, n_tokens, dtype, max_length)
            for layer in sorted(set(layers))
        }
        found = self._load_missing(keys, {})
        if len(found) == len(keys):
            return found
        with file_lock(self.root / next(iter(keys.values())).group_path()):
            found = self._load_missing(keys, found)
            missing = sorted(set(keys) - set(found))
            if missing:
                sequences = None
                if isinstance(source, SampledCorpus):
                    sequences = self._sampled(model, tokenizer, source, n_tokens, max_length, fingerprint)
                fresh = collect_stats(
                    model,
                    tokenizer,
                    missing,
                    source,
                    n_tokens=n_tokens,
                    dtype=dtype,
                    max_length=max_length,
                    fingerprint=fingerprint,
                    sequences=sequences,
                )
                for stats in fresh.values():
                    self._save(stats)
                found.update(fresh)
        return dict(sorted(found.items()))

    def path(self, key: StatsKey) -> Path:
        return self.root / key.relative_path()

    def _load_missing(self, keys: dict[int, StatsKey], found: dict[int, LayerStats]) -> dict[int, LayerStats]:
        """`found` plus every layer of `keys` not yet in it whose statistic is on disk."""
        found = dict(found)
        for layer, key in keys.items():
            if layer not in found and (cached := self._load(key)) is not None:
                found[layer] = cached
        return found

    def _load(self, key: StatsKey) -> LayerStats | None:
        found = read_keyed_tensors(self.path(key), asdict(key))
        if found is None:
            return None
        tensors, meta = found
        log.info("Loaded cached statistic of layer %d from %s", key.layer, self.path(key))
        return LayerStats(
            key, tensors["moment"], int(meta["n_tokens"]), int(meta["n_documents"]), float(meta["seconds"])
        )

    def _save(self, stats: LayerStats) -> None:
        write_keyed_tensors(
            self.path(stats.key),
            {"moment": stats.moment},
            asdict(stats.key),
            n_tokens=str(stats.n_tokens),
            n_documents=str(stats.n_documents),
            seconds=str(stats.seconds),
        )

    def _sampled(
        self, model: nn.Module, tokenizer, source: SampledCorpus, n_tokens: int, length: int, fingerprint: str
    ) -> list[torch.Tensor]:
        """Sampled token sequences, cached next to the statistics (sampling is the expensive part); shared by
        the statistics of every dtype, so taken under a lock of its own (always after a statistics lock)."""
        name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", source.corpus_id)
        path = (
            self.root / fingerprint / f"sampled-{name}-n{n_tokens}-len{length}.{format_tag(SAMPLED_FORMAT)}.safetensors"
        )
        key = {
            "fingerprint": fingerprint,
            "corpus_id": source.corpus_id,
            "n_tokens": n_tokens,
            "length": length,
            "format": SAMPLED_FORMAT,
        }

        def load() -> list[torch.Tensor] | None:
            found = read_keyed_tensors(path, key)
            return None if found is None else list(found[0]["ids"])

        def save(sequences: list[torch.Tensor]) -> None:
            write_keyed_tensors(path, {"ids": torch.stack(sequences)}, key)

        return locked_compute(
            path, load, lambda: sample_sequences(model, tokenizer, n_tokens, length=length, seed=source.seed), save
        )
