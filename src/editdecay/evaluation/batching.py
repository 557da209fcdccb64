"""Batched teacher-forced scoring and generation with explicit token positions.

Every position is computed from each row's own offset, so results do not depend on the padding side,
on BOS handling or on what else is in the batch. Position ids are passed explicitly (left padding would
otherwise shift rotary / learned positions).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig

from editdecay.models import causal_lm
from editdecay.models.kvcache import cache_kwargs, output_cache
from editdecay.models.padding import padded_groups

PadSide = Literal["left", "right"]
Ids = tuple[int, ...]
# One more forward pass costs about as much as this many more padded tokens (chunking contexts by length).
CHUNK_OVERHEAD_TOKENS = 32


@contextmanager
def inference(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode (no dropout) and no autograd inside; restores the training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield next(model.parameters()).device
    finally:
        if was_training:
            model.train()


def encode(tokenizer, texts: Sequence[str], *, specials: bool) -> list[Ids]:
    """Token ids of each text.

    With `specials=True` the tokenizer's leading special tokens (BOS for Llama / Gemma) are kept, never a
    trailing one (EOS would break continuation scoring). Targets are encoded with `specials=False`.
    """
    if not texts:
        return []
    plain = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    prefix = special_prefix(tokenizer) if specials else ()
    return [prefix + tuple(ids) for ids in plain]


def special_prefix(tokenizer) -> Ids:
    probe = "Paris is a city"
    full = list(tokenizer(probe)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start])
    return ()


def continuation_text(target: str) -> str:
    """Targets are scored with a leading space (docs/algorithms.md §1, §8)."""
    return target if target.startswith(" ") else " " + target


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offsets: tuple[int, ...]  # index of each row's first real token


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: PadSide, device: torch.device) -> Batch:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for row, seq in enumerate(seqs):
        start = width - len(seq) if side == "left" else 0
        ids[row, start : start + len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, start : start + len(seq)] = 1
        offsets.append(start)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids.to(device), mask.to(device), positions.to(device), tuple(offsets))


@dataclass(frozen=True)
class TokenScores:
    """Teacher-forced scores of one continuation: log p of each token and the argmax at its position."""

    tokens: Ids
    logprobs: tuple[float, ...]
    argmax: Ids

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.logprobs))

    @property
    def nll(self) -> float:
        """Mean per-token negative log-likelihood."""
        return -self.sum_logprob / len(self.tokens)

    @property
    def token_accuracy(self) -> float:
        return sum(a == t for a, t in zip(self.argmax, self.tokens, strict=True)) / len(self.tokens)

    @property
    def exact(self) -> bool:
        """Greedy decoding reproduces every token (teacher-forced argmax equals each target token)."""
        return self.argmax == self.tokens


def _plan(pairs: Sequence[tuple[Ids, Ids]]) -> tuple[list[tuple[Ids, Ids]], list[int]]:
    """Distinct forward inputs (context, suffix) and, per pair, the input that covers it.

    A pair (c, t) needs logits at the positions of c + t[:-1]; any input c + s whose suffix s starts with
    t[:-1] provides them. Keeping only maximal suffixes lets single-token targets of the same prompt (and
    labels sharing a prefix) share one forward pass.
    """
    by_context: dict[Ids, set[Ids]] = {}
    for context, target in pairs:
        by_context.setdefault(context, set()).add(target[:-1])
    sequences: list[tuple[Ids, Ids]] = []
    index: dict[tuple[Ids, Ids], int] = {}
    for context, suffixes in by_context.items():
        for suffix in sorted(suffixes, key=len, reverse=True):
            covered = next((s for s in suffixes if len(s) > len(suffix) and s[: len(suffix)] == suffix), None)
            index[(context, suffix)] = index[(context, covered)] if covered is not None else len(sequences)
            if covered is None:
                sequences.append((context, suffix))
    return sequences, [index[(context, target[:-1])] for context, target in pairs]


def score_continuations(
    model: nn.Module,
    pad_id: int,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    greedy: Mapping[Ids, int] | None = None,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "scoring",
) -> tuple[list[TokenScores], dict[Ids, Ids]]:
    """Teacher-forced log-probabilities of each continuation after its context, in padded batches.

    Each distinct context runs once (`batch_size` contexts per forward); its continuations (target_new,
    target_true, ...) then continue from its KV cache in a second, short forward, and contexts listed in
    `greedy` (context -> n tokens) get their greedy continuation of exactly n tokens (EOS is not a stop)
    from the same cache. Returns one TokenScores per pair and the greedy continuations. Contexts are
    left-padded: the continuation's cached prefix must hold no padding between real tokens, or
    sliding-window attention (which counts cache slots, not positions) would see the wrong window.
    """
    pairs_t = [(tuple(c), tuple(t)) for c, t in pairs]
    for i, (context, target) in enumerate(pairs_t):
        if not context or not target:
            raise ValueError(f"Pair {i}: empty {'context' if not context else 'continuation'} (nothing to score).")
    sequences, cover = _plan(pairs_t)
    needed: dict[int, set[tuple[int, int]]] = {}
    for (_context, target), seq in zip(pairs_t, cover, strict=True):
        needed.setdefault(seq, set()).update(enumerate(target))
    by_context: dict[Ids, list[int]] = {}
    for s, (context, _suffix) in enumerate(sequences):
        by_context.setdefault(context, []).append(s)
    greedy = dict(greedy or {})
    unscored = [c for c in greedy if c not in by_context]
    if unscored:
        raise ValueError(f"{len(unscored)} greedy contexts have no continuation to score.")

    # Contexts that need a second forward (a continuation or more than one greedy token) are chunked apart
    # from the others, so fewer chunks run one; each group is chunked by length with little padding.
    def needs_more(context: Ids) -> bool:
        return greedy.get(context, 0) > 1 or any(sequences[s][1] for s in by_context[context])

    chunks = []
    for group in (True, False):
        in_group = [c for c in by_context if needs_more(c) == group]
        chunks += [
            [in_group[i] for i in rows]
            for rows in padded_groups([len(c) for c in in_group], overhead=CHUNK_OVERHEAD_TOKENS, max_rows=batch_size)
        ]
    logprob: dict[tuple[int, int, int], float] = {}
    argmax: dict[tuple[int, int], int] = {}
    answers: dict[Ids, Ids] = {}
    with inference(model) as device:
        bar = tqdm(total=len(by_context), desc=desc, unit="prompt", disable=not progress, leave=False)
        for chunk in chunks:
            members = [(row, s) for row, context in enumerate(chunk) for s in by_context[context]]
            logits_of, chunk_answers = _continuation_logits(
                model, pad_id, chunk, members, sequences, [greedy.get(c, 0) for c in chunk], device
            )
            answers.update((c, a) for c, a in zip(chunk, chunk_answers, strict=True) if c in greedy)
            for (_row, s), logits in zip(members, logits_of, strict=True):
                _context, suffix = sequences[s]
                log_p = torch.log_softmax(logits, dim=-1)
                best = logits.argmax(dim=-1).tolist()
                for j in range(len(suffix) + 1):
                    argmax[(s, j)] = best[j]
                wanted = sorted(needed[s])
                picked = log_p[[j for j, _ in wanted], [t for _, t in wanted]].double().tolist()
                logprob.update(((s, j, t), value) for (j, t), value in zip(wanted, picked, strict=True))
            bar.update(len(chunk))
        bar.close()
    scores = [
        TokenScores(
            target,
            tuple(logprob[(seq, j, tok)] for j, tok in enumerate(target)),
            tuple(argmax[(seq, j)] for j in range(len(target))),
        )
        for (_context, target), seq in zip(pairs_t, cover, strict=True)
    ]
    return scores, answers


def _continuation_logits(
    model: nn.Module,
    pad_id: int,
    contexts: list[Ids],
    members: list[tuple[int, int]],
    sequences: list[tuple[Ids, Ids]],
    greedy_lengths: list[int],
    device: torch.device,
) -> tuple[list[torch.Tensor], list[Ids]]:
    """Float logits (len(suffix) + 1, vocab) for each (context row, sequence) in `members`: position 0 from the
    context's last token, position j from suffix token j - 1 (read after the context's cached keys/values);
    and each context's greedy continuation of greedy_lengths[row] tokens."""
    batch = pad_batch(contexts, pad_id, "left", device)
    last = torch.full((len(contexts), 1), batch.input_ids.shape[1] - 1, device=device)
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=True,
        logits_to_keep=last,
    )
    first = out.logits[:, 0].float()
    best = first.argmax(dim=-1).tolist()
    answers: list[Ids] = [(best[row],) if n == 1 else () for row, n in enumerate(greedy_lengths)]
    decoding = [row for row, n in enumerate(greedy_lengths) if n > 1]
    if decoding:
        rows = torch.tensor(decoding, device=device)
        cache = copy.deepcopy(output_cache(out))  # the continuations below reuse the original
        cache.batch_select_indices(rows)
        decoded = _decode(
            model,
            cache,
            batch.attention_mask[rows],
            batch.position_ids[rows, -1:],
            first[rows],
            [greedy_lengths[row] for row in decoding],
            frozenset(),
        )
        for row, tokens in zip(decoding, decoded, strict=True):
            answers[row] = tokens
    extended = [(k, row, sequences[s][1]) for k, (row, s) in enumerate(members) if sequences[s][1]]
    later: dict[int, torch.Tensor] = {}
    if extended:
        rows = torch.tensor([row for _, row, _ in extended], device=device)
        cache = output_cache(out)
        cache.batch_select_indices(rows)  # one cache row per continuation (rows repeat)
        width = max(len(suffix) for _, _, suffix in extended)
        ids = torch.full((len(extended), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(extended), width), dtype=torch.long)
        for i, (_, _, suffix) in enumerate(extended):
            ids[i, : len(suffix)] = torch.tensor(suffix)
            mask[i, : len(suffix)] = 1
        lengths = torch.tensor([len(contexts[row]) for _, row, _ in extended])
        positions = lengths[:, None] + torch.arange(width)[None, :]
        logits = model(
            input_ids=ids.to(device),
            attention_mask=torch.cat([batch.attention_mask[rows], mask.to(device)], dim=1),
            position_ids=positions.to(device),
            **cache_kwargs(cache),
            use_cache=True,
        ).logits.float()
        later = {k: logits[i, : len(suffix)] for i, (k, _, suffix) in enumerate(extended)}
    logits_of = [
        torch.cat([first[row : row + 1], later[k]]) if k in later else first[row : row + 1]
        for k, (row, _s) in enumerate(members)
    ]
    return logits_of, answers


def greedy_generate(
    model: nn.Module,
    pad_id: int,
    contexts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    *,
    eos_ids: frozenset[int] = frozenset(),
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "generating",
) -> list[Ids]:
    """Greedy continuations, batched with left padding and a KV cache.

    Row i gets up to max_new_tokens[i] tokens and stops after an EOS id (not included).
    """
    contexts_t = [tuple(c) for c in contexts]
    limits = [max_new_tokens] * len(contexts_t) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != len(contexts_t):
        raise ValueError(f"{len(limits)} token limits for {len(contexts_t)} contexts")
    results: list[Ids] = [() for _ in contexts_t]
    todo = sorted((i for i, limit in enumerate(limits) if limit > 0), key=lambda i: len(contexts_t[i]), reverse=True)
    with inference(model) as device:
        bar = tqdm(total=len(todo), desc=desc, unit="seq", disable=not progress, leave=False)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = pad_batch([contexts_t[i] for i in chunk], pad_id, "left", device)
            out = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=True,
                logits_to_keep=1,
            )
            new = _decode(
                model,
                output_cache(out),
                batch.attention_mask,
                batch.position_ids[:, -1:],
                out.logits[:, -1],
                [limits[i] for i in chunk],
                eos_ids,
            )
            for i, tokens in zip(chunk, new, strict=True):
                results[i] = tokens
            bar.update(len(chunk))
        bar.close()
    return results


def _decode(
    model: nn.Module,
    cache: object,
    mask: torch.Tensor,
    last_positions: torch.Tensor,
    logits: torch.Tensor,
    limits: list[int],
    eos_ids: frozenset[int],
) -> list[Ids]:
    """Greedy decoding on from a KV cache whose rows end at `last_positions` (rows, 1), `logits` (rows, vocab)
    being the next-token logits there: up to limits[row] tokens per row, stopping after an EOS id."""
    generated: list[list[int]] = [[] for _ in limits]
    active = [limit > 0 for limit in limits]
    positions = last_positions
    for step in range(max(limits)):
        tokens = logits.argmax(dim=-1)
        for row, token in enumerate(tokens.tolist()):
            if not active[row]:
                continue
            if token in eos_ids:
                active[row] = False
                continue
            generated[row].append(token)
            active[row] = len(generated[row]) < limits[row]
        if not any(active) or step == max(limits) - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions + 1
        out = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=positions,
            **cache_kwargs(cache),
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1]
    return [tuple(g) for g in generated]


def beam_generate(
    model: nn.Module,
    pad_id: int,
    contexts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    num_beams: int,
    eos_ids: frozenset[int] = frozenset(),
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "beam search",
) -> list[Ids]:
    """Beam-search continuations (transformers `generate`), batched with left padding; EOS is stripped."""
    contexts_t = [tuple(c) for c in contexts]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        do_sample=False,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids) or None,
    )
    order = sorted(range(len(contexts_t)), key=lambda i: len(contexts_t[i]), reverse=True)
    results: list[Ids] = [() for _ in contexts_t]
    with inference(model) as device:
        bar = tqdm(total=len(order), desc=desc, unit="seq", disable=not progress, leave=False)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = pad_batch([contexts_t[i] for i in chunk], pad_id, "left", device)
            output = causal_lm(model).generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, generation_config=config
            )
            for row, i in enumerate(chunk):
                new = output[row, batch.input_ids.shape[1] :].tolist()
                cut = next((k for k, tok in enumerate(new) if tok in eos_ids), len(new))
                results[i] = tuple(new[:cut])
            bar.update(len(chunk))
        bar.close()
    return results
