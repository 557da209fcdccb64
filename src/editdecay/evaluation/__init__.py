"""Edit metrics on one model, decay metrics across model groups, downstream accuracy, activation shift."""

from editdecay.data.tasks import TASKS, TaskItem, load_task, task_available
from editdecay.evaluation.activations import DRIFTS, SIMILARITIES, ProbePrompt, activation_shift, probe_prompts
from editdecay.evaluation.decay import (
    DECAY_DEFINITIONS,
    GROUPS,
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
from editdecay.evaluation.groups import (
    GroupScores,
    Summary,
    evaluate_groups,
    group_activations,
    score_group,
    summarize_groups,
    write_summary,
)
from editdecay.evaluation.model_groups import ModelGroups, SeparateModels

__all__ = [
    "DECAY_DEFINITIONS",
    "DRIFTS",
    "GROUPS",
    "KINDS",
    "METRIC_DEFINITIONS",
    "SIMILARITIES",
    "TASKS",
    "GroupScores",
    "ModelGroups",
    "ProbePrompt",
    "SeparateModels",
    "Summary",
    "TaskItem",
    "activation_shift",
    "control_summary",
    "decay_summary",
    "edit_metrics",
    "evaluate_groups",
    "evaluate_tasks",
    "extract_answer",
    "flip_counts",
    "group_activations",
    "load_task",
    "neighborhood_agreement",
    "option_pairs",
    "outcome_classes",
    "probe_prompts",
    "score_edits",
    "score_group",
    "success_flags",
    "summarize_edit_metrics",
    "summarize_groups",
    "task_accuracy",
    "task_available",
    "write_summary",
]
