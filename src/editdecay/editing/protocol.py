"""What every editor is: something that turns edit requests into a WeightPatch (ARCHITECTURE: the Editor protocol).

Locate-then-edit editors (MEMIT, AlphaEdit) share statistics and target values through the context's stores;
editors of other families (a trained editor network, a constrained fine-tuning baseline) ignore what they do not
need. `resolved_hparams` lets the experiment runner key a patch by the exact settings before anything runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from editdecay.data import EditRequest
from editdecay.editing.patch import WeightPatch
from editdecay.editing.stats import StatsStore
from editdecay.editing.target_store import TargetStore
from editdecay.models import ModelShape


@dataclass(frozen=True)
class EditContext:
    """What an edit may use besides the model and the requests.

    `stats`: the second-moment statistics cache (None: `default_cache_dir()/stats`); `targets`: a cache of
    target values shared between editors; `seed`: the editor's own randomness (context templates);
    `fingerprint`: the base model's identity when the caller knows it (saves hashing the weights); `artifacts`: where
    editors keep what they train for a model (MEND's networks under `artifacts/mend`; None:
    `default_cache_dir()/editors`); `progress`: where a sequential edit (several batches) saves its progress after
    every batch, so a killed edit resumes at the next batch (None: not saved; editing/edit_progress.py).
    """

    stats: StatsStore | None = None
    targets: TargetStore | None = None
    seed: int = 0
    fingerprint: str | None = None
    artifacts: Path | None = None
    progress: Path | None = None


class ResolvedHyperParams(Protocol):
    layers: list[int]

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class Editor(Protocol):
    @property
    def name(self) -> str:
        """The registry name (read-only here, so a class attribute satisfies it, as in LocateEditor)."""
        ...

    def resolved_hparams(self, model: nn.Module | ModelShape, device: str | None = None) -> ResolvedHyperParams:
        """The settings `edit` will use on this model (a ModelShape and a device suffice: no weights needed)."""
        ...

    def edit(
        self, model: nn.Module, tokenizer: Any, requests: Sequence[EditRequest], context: EditContext
    ) -> WeightPatch:
        """The patch that edits `requests` into `model`; the caller's model is left as it was."""
        ...
