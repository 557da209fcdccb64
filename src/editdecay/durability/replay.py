"""`replay`: the edit requests mixed into the fine-tuning corpus (docs/algorithms.md §13.1).

Each request gives one example per prompt (the rewrite prompt and every paraphrase), stated in the corpus's
instruction format with the new target as the response. They replace `fraction` of the corpus's examples, so the
run keeps its number of examples and steps (a fair comparison with plain fine-tuning) and the share of replayed
examples is exactly round(fraction * N) / N. When there are fewer slots than prompts, the slots go round the
requests (in a seeded order) before any request gets a second prompt, rewrite prompts first: every edit is
replayed once before any is replayed twice.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from editdecay.data import EditRequest, InstructionExample
from editdecay.data.fact_statements import statement


def replay_examples(requests: Sequence[EditRequest]) -> list[list[InstructionExample]]:
    """Per request, its rewrite prompt then each paraphrase, answered with the new target."""
    if not requests:
        raise ValueError("replay needs at least one edit request.")
    return [
        [statement(prompt, request.target_new) for prompt in (request.prompt, *request.paraphrase_prompts)]
        for request in requests
    ]


def _round_robin(per_request: Sequence[Sequence[InstructionExample]], rng: random.Random) -> list[InstructionExample]:
    order = list(per_request)
    rng.shuffle(order)
    rounds = max(len(prompts) for prompts in order)
    return [prompts[k] for k in range(rounds) for prompts in order if k < len(prompts)]


def mix_replay(
    corpus: Sequence[InstructionExample],
    replay: Sequence[Sequence[InstructionExample]],
    fraction: float,
    seed: int,
) -> list[InstructionExample]:
    """round(fraction * len(corpus)) corpus examples (a seeded choice) replaced by replay examples (`replay`: per
    request, as `replay_examples` gives them; taken round the requests, cycled if needed), shuffled: the result has
    len(corpus) examples."""
    if not 0 < fraction < 1:
        raise ValueError(f"replay_fraction must be in (0, 1), got {fraction}")
    if not corpus:
        raise ValueError("replay needs a non-empty fine-tuning corpus.")
    rng = random.Random(seed)
    n_replay = max(1, round(fraction * len(corpus)))
    order = _round_robin(replay, rng)
    kept = rng.sample(list(corpus), len(corpus) - n_replay)
    mixed = [*kept, *(order[i % len(order)] for i in range(n_replay))]
    rng.shuffle(mixed)
    return mixed
