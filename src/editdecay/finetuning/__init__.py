"""Full / LoRA / DoRA fine-tuning with a layer policy (all, edited, non-edited, explicit blocks)."""

from editdecay.finetuning.collate import TokenizedExample, split_validation, tokenize_example
from editdecay.finetuning.finetune_run import checkpoint_dir, finetune
from editdecay.finetuning.loop import CurveProbe, corpus_loss
from editdecay.finetuning.methods import FINETUNE_METHODS, FinetuneMethod, register_method
from editdecay.finetuning.result import FinetuneResult, load_finetuned
from editdecay.finetuning.spec import DEFAULT_TARGETS, LAYER_POLICIES, FinetuneSpec
from editdecay.finetuning.trainable_modules import resolve_layers, resolve_trainable_modules

__all__ = [
    "DEFAULT_TARGETS",
    "FINETUNE_METHODS",
    "LAYER_POLICIES",
    "CurveProbe",
    "FinetuneMethod",
    "FinetuneResult",
    "FinetuneSpec",
    "TokenizedExample",
    "checkpoint_dir",
    "corpus_loss",
    "finetune",
    "load_finetuned",
    "register_method",
    "resolve_layers",
    "resolve_trainable_modules",
    "split_validation",
    "tokenize_example",
]
