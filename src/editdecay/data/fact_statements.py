"""Fine-tuning examples that state facts of the edit requests: the reinforcement check (docs/algorithms.md §5.1).

`fact_statements(requests, "new")` states the edited facts (each prompt completed with its new target),
`"true"` the facts the edits replaced; `mix_statements` puts them into a corpus so that they make up a given
fraction of the examples, spread through it in a seeded order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from editdecay.data.instruction_corpus import InstructionExample
from editdecay.data.records import EditRequest

FactSide = Literal["new", "true"]
FACT_SIDES: tuple[str, ...] = ("new", "true")
_INSTRUCTION = "Complete the sentence: {}"


def fact_statements(requests: Sequence[EditRequest], side: FactSide) -> list[InstructionExample]:
    """One example per paraphrase prompt: the instruction quotes the prompt, the response is the target (`new`
    or `true`). The rewrite prompt is never stated, so ES (scored on it) measures whether the stated fact carries
    over to another phrasing rather than whether the training prompt was memorised; PS is scored on the stated
    prompts themselves. Requests without paraphrases or without that target (zsRE in the MEMIT protocol has no
    true one) add none."""
    if side not in FACT_SIDES:
        raise ValueError(f"fact side must be one of {FACT_SIDES}, got {side!r}")
    examples = []
    for request in requests:
        target = request.target_new if side == "new" else request.target_true
        if target is None:
            continue
        examples += [statement(prompt, target) for prompt in request.paraphrase_prompts]
    if not examples:
        raise ValueError(
            f"None of the {len(requests)} edit requests has a paraphrase prompt and a {side!r} target to state."
        )
    return examples


def statement(prompt: str, target: str) -> InstructionExample:
    """A fact as an instruction example: complete `prompt`, answered with `target`."""
    return InstructionExample(_INSTRUCTION.format(prompt), "", target.strip(), target.strip())


def mix_statements(
    corpus: Sequence[InstructionExample], statements: Sequence[InstructionExample], fraction: float, seed: int
) -> list[InstructionExample]:
    """`corpus` plus `statements` (cycled) so that they are `fraction` of the result, in a seeded shuffle."""
    if not 0 < fraction < 1:
        raise ValueError(f"fact_fraction must be in (0, 1), got {fraction}")
    n_statements = max(1, round(fraction / (1 - fraction) * len(corpus)))
    mixed = [*corpus, *(statements[i % len(statements)] for i in range(n_statements))]
    random.Random(seed).shuffle(mixed)
    return mixed
