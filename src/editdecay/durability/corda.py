"""`corda`: edit-aware LoRA through PEFT's CorDA knowledge-preserved adaptation (docs/algorithms.md §13.2).

CorDA decomposes each adapted weight W after weighting it with the covariance C = X^T X of its inputs on
calibration data, SVD(W C) = U S V^T, and in its knowledge-preserved mode (KPM) builds the adapter from the r
smallest components, leaving the base weight as the residual W_res = W - B0 A0. Fine-tuning then moves the
directions that the calibration inputs use least. Here the calibration data are the edit prompts answered with
their new targets, so the adapter avoids the directions the edits travel through. PEFT does the decomposition
(`preprocess_corda`); we only pass the calibration forward passes, and save the result as a standard LoRA adapter
of the original weights (PEFT's conversion: ΔW = B A - B0 A0, rank 2r), which loads like any LoRA result.

`balance` (our one change to PEFT's initialisation): the KPM factors are badly scaled, B0 = U sqrt(S) small and
A0 = sqrt(S) V^T large (V carries C^{-1}), so Adam's per-element steps on B are multiplied by a large A and the run
diverges at rates that fine-tune plain LoRA fine (SmolLM2, lr 2.5e-3: loss 3.3 -> 8.7 -> 13 -> 33). Balancing each
rank-one component, b_j <- c_j b_j and a_j <- a_j / c_j with c_j = sqrt(||a_j|| / ||b_j||), leaves B0 A0 (hence the
residual and the initial model) exactly as PEFT built them and only changes how the optimiser sees the factors.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editdecay.data import EditRequest
from editdecay.data.fact_statements import statement
from editdecay.data.instruction_corpus import format_prompt
from editdecay.durability.projection import weight_of
from editdecay.finetuning.hooks import TrainingHooks
from editdecay.finetuning.methods import ADAPTER_DIR, FinetuneMethod
from editdecay.finetuning.spec import FinetuneSpec

_INITIAL = "corda_initial"


def calibration_texts(requests: Sequence[EditRequest]) -> list[str]:
    """Each edit prompt (rewrite and paraphrases) with its new target, as raw text and in the instruction format
    the fine-tuning corpus uses, so both the edited facts and their statements count as knowledge to preserve."""
    texts = []
    for request in requests:
        for prompt in (request.prompt, *request.paraphrase_prompts):
            texts.append(f"{prompt} {request.target_new.strip()}")
            example = statement(prompt, request.target_new)
            texts.append(format_prompt(example, with_response=True))
    return texts


class CordaInit(TrainingHooks):
    """LoRA initialised by CorDA KPM with `texts` as calibration data (LoRA only: DoRA and full are refused)."""

    def __init__(self, texts: Sequence[str], tokenizer: Any, max_length: int = 128, balance: bool = True) -> None:
        if not texts:
            raise ValueError("corda needs calibration texts (the edit prompts).")
        self.texts, self.tokenizer = list(texts), tokenizer
        self.max_length, self.balance = max_length, balance
        self._initial_dir: tempfile.TemporaryDirectory[str] | None = None

    def identity(self) -> dict[str, Any]:
        digest = hashlib.blake2b("\n".join(self.texts).encode(), digest_size=12).hexdigest()
        return {
            "strategy": "corda/kpm",
            "calibration": digest,
            "n_texts": len(self.texts),
            "max_len": self.max_length,
            "balance": self.balance,
        }

    def check(self, spec: FinetuneSpec, modules: list[str]) -> None:
        if spec.method != "lora":
            raise ValueError(f"corda initialises a LoRA adapter; finetune.method is {spec.method!r} (use lora).")

    def prepare(self, method: FinetuneMethod, model: nn.Module, modules: list[str], spec: FinetuneSpec) -> nn.Module:
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora.config import CordaConfig
        from peft.tuners.lora.corda import preprocess_corda

        config = LoraConfig(
            r=spec.r,
            lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft annotates it int; a float works
            lora_dropout=spec.dropout,
            target_modules=list(modules),
            bias="none",
            task_type="CAUSAL_LM",
            init_lora_weights="corda",
            corda_config=CordaConfig(corda_method="kpm"),
        )
        preprocess_corda(model, config, run_model=lambda: self._calibrate(model))
        torch.manual_seed(spec.seed)
        trained = get_peft_model(model, config)
        if self.balance:
            balance_factors(trained)
        # The initial adapter, saved as a plain LoRA config, is what PEFT subtracts when converting at save time.
        trained.peft_config["default"].init_lora_weights = True  # type: ignore[attr-defined]  # a LoraConfig
        self._initial_dir = tempfile.TemporaryDirectory(prefix="editdecay-corda-")
        trained.save_pretrained(str(Path(self._initial_dir.name) / _INITIAL))
        return trained

    @torch.no_grad()
    def _calibrate(self, model: nn.Module) -> None:
        """One forward pass per text (no padding, whose positions would enter the covariance)."""
        device = next(model.parameters()).device
        for text in self.texts:
            ids = self.tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt")["input_ids"]
            model(input_ids=ids.to(device), use_cache=False)

    def save(self, method: FinetuneMethod, trained: nn.Module, base: nn.Module, directory: Path) -> None:
        if self._initial_dir is None:
            raise RuntimeError("CordaInit.save before prepare.")
        initial = Path(self._initial_dir.name) / _INITIAL
        with warnings.catch_warnings():  # the converted adapter is a plain LoRA: PEFT notes its corda_config is unused
            warnings.filterwarnings("ignore", message=".*corda_config.*", category=UserWarning)
            trained.save_pretrained(  # type: ignore[operator]  # a PeftModel
                str(directory / ADAPTER_DIR), path_initial_model_for_weight_conversion=str(initial)
            )
        self._initial_dir.cleanup()
        self._initial_dir = None


@torch.no_grad()
def balance_factors(model: nn.Module) -> None:
    """Rescale every LoRA component so that ||b_j|| = ||a_j||, keeping each product b_j a_j (and so B A)."""
    for module in model.modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not isinstance(lora_a, nn.ModuleDict) or not isinstance(lora_b, nn.ModuleDict):
            continue
        for name in lora_a:
            A, B = weight_of(lora_a[name]), weight_of(lora_b[name])  # (r, m), (d, r)
            scale = (A.norm(dim=1) / B.norm(dim=0).clamp_min(1e-30)).sqrt()  # c_j
            B.mul_(scale[None, :])
            A.div_(scale[:, None])
