"""Edit metrics on one model, decay metrics across model groups, downstream accuracy, activation shift."""

from editdecay.data.tasks import TASKS, TaskItem, load_task, task_available
from editdecay.evaluation.activations import DRIFTS, SIMILARITIES, ProbePrompt, activation_shift, probe_prompts
from editdecay.evaluation.decay import (
    DECAY_DEFINITIONS,
    control_summary,
    decay_summary,
    flip_counts,
    outcome_classes,
)
from editdecay.evaluation.downstream import evaluate_tasks, extract_answer, option_pairs, task_accuracy
from editdecay.evaluation.edit_metrics import (
    METRIC_DEFINITIONS,
    edit_metrics,
    neighborhood_agreement,
    success_flags,
    summarize_edit_metrics,
)
from editdecay.evaluation.edit_scoring import KINDS, score_edits

__all__ = [
    "DECAY_DEFINITIONS",
    "DRIFTS",
    "KINDS",
    "METRIC_DEFINITIONS",
    "SIMILARITIES",
    "TASKS",
    "ProbePrompt",
    "TaskItem",
    "activation_shift",
    "control_summary",
    "decay_summary",
    "edit_metrics",
    "evaluate_tasks",
    "extract_answer",
    "flip_counts",
    "load_task",
    "neighborhood_agreement",
    "option_pairs",
    "outcome_classes",
    "probe_prompts",
    "score_edits",
    "success_flags",
    "summarize_edit_metrics",
    "task_accuracy",
    "task_available",
]
