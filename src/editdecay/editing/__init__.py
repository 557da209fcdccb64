"""Knowledge editors (MEMIT, AlphaEdit) and what they share: statistics, targets, solves, weight patches."""

from editdecay.data.stats_text import MODEL_SAMPLED, open_corpus
from editdecay.editing.alphaedit import AlphaEditEditor, AlphaEditState
from editdecay.editing.editor import LocateEditor
from editdecay.editing.hparams import PRESETS, AlphaEditHyperParams, MemitHyperParams
from editdecay.editing.memit import MemitEditor
from editdecay.editing.patch import PatchMismatchError, WeightPatch
from editdecay.editing.protocol import EditContext, Editor
from editdecay.editing.registry import EDITORS, EditorEntry, build_editor, register_editor
from editdecay.editing.solve import SolveError, alphaedit_delta, memit_delta, nullspace_projector
from editdecay.editing.stats import LayerStats, StatisticError, StatsStore, collect_stats
from editdecay.editing.subject import EditInputError
from editdecay.editing.target_store import TargetKey, TargetStore
from editdecay.editing.target_values import TargetOptimisationError

__all__ = [
    "EDITORS",
    "MODEL_SAMPLED",
    "PRESETS",
    "AlphaEditEditor",
    "AlphaEditHyperParams",
    "AlphaEditState",
    "EditContext",
    "EditInputError",
    "Editor",
    "EditorEntry",
    "LayerStats",
    "LocateEditor",
    "MemitEditor",
    "MemitHyperParams",
    "PatchMismatchError",
    "SolveError",
    "StatisticError",
    "StatsStore",
    "TargetKey",
    "TargetOptimisationError",
    "TargetStore",
    "WeightPatch",
    "alphaedit_delta",
    "build_editor",
    "collect_stats",
    "memit_delta",
    "nullspace_projector",
    "open_corpus",
    "register_editor",
]
