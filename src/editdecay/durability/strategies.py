"""Edit-preserving fine-tuning strategies: one registry that the config (`finetune.strategy`), the CLI and the
tests read (docs/algorithms.md §13).

A strategy changes how the final model Med_ft is made from the edited model Med:
- `none`: plain fine-tuning of Med;
- `replay`: the edit requests replace `replay_fraction` of the fine-tuning examples (durability/replay.py);
- `protect`: updates of the edited layers' MLP output projections are kept off the edit keys
  (durability/projection.py, ΔW k_i = 0);
- `corda`: the LoRA adapter is initialised by CorDA's knowledge-preserved decomposition with the edit prompts as
  calibration data (durability/corda.py);
- `reedit`: no fine-tuning of Med at all: the same editor edits the fine-tuned model, Med_ft = Mft + edit(Mft).
Mft, the fine-tuned base model, is always plain fine-tuning: the strategies act on the edited model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from editdecay.data import EditRequest, InstructionExample
from editdecay.durability.corda import CordaInit, calibration_texts
from editdecay.durability.projection import KeyProjection
from editdecay.durability.replay import mix_replay, replay_examples
from editdecay.editing import WeightPatch
from editdecay.finetuning.hooks import TrainingHooks


@dataclass(frozen=True)
class Strategy:
    """A registered strategy. `reedits`: Med_ft is the editor applied to Mft instead of a fine-tuning of Med.
    `version`: part of the store key of its runs; bump it when the strategy changes what it produces."""

    name: str
    summary: str
    reedits: bool = False
    version: str = ""

    def corpus(
        self, examples: list[InstructionExample], requests: Sequence[EditRequest], fraction: float, seed: int
    ) -> list[InstructionExample]:
        """The fine-tuning examples of Med (the corpus itself unless the strategy mixes data in)."""
        return examples

    def hooks(self, patch: WeightPatch, requests: Sequence[EditRequest], tokenizer: object) -> TrainingHooks | None:
        """How Med's fine-tuning is changed (None: it is not)."""
        return None


@dataclass(frozen=True)
class Replay(Strategy):
    def corpus(
        self, examples: list[InstructionExample], requests: Sequence[EditRequest], fraction: float, seed: int
    ) -> list[InstructionExample]:
        return mix_replay(examples, replay_examples(requests), fraction, seed)


@dataclass(frozen=True)
class Protect(Strategy):
    def hooks(self, patch: WeightPatch, requests: Sequence[EditRequest], tokenizer: object) -> TrainingHooks | None:
        if not patch.keys:
            raise ValueError(
                f"protect needs the edit keys saved with the patch, and {patch!r} has none (a patch made before "
                "patch format 3, or by an editor that maps no keys); re-run the edit."
            )
        return KeyProjection(patch.keys, mode="protect")


@dataclass(frozen=True)
class Corda(Strategy):
    def hooks(self, patch: WeightPatch, requests: Sequence[EditRequest], tokenizer: object) -> TrainingHooks | None:
        return CordaInit(calibration_texts(requests), tokenizer)


STRATEGIES: dict[str, Strategy] = {
    "none": Strategy("none", "plain fine-tuning of the edited model"),
    "replay": Replay(
        "replay", "edit requests replace finetune.replay_fraction of the fine-tuning examples", version="replay/2"
    ),
    "protect": Protect("protect", "edited layers' MLP output updates projected off the edit keys: ΔW k_i = 0"),
    "corda": Corda("corda", "LoRA initialised by CorDA (knowledge-preserved) on the edit prompts", version="corda/2"),
    "reedit": Strategy("reedit", "fine-tune the base model, then edit it: Med_ft = Mft + edit(Mft)", reedits=True),
}


def register_strategy(strategy: Strategy) -> None:
    """Add (or replace) a strategy under `strategy.name`."""
    STRATEGIES[strategy.name] = strategy


def strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"Unknown fine-tuning strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")
    return STRATEGIES[name]
