"""The training loop: AdamW over float32 weights, autocast compute, gradient accumulation, checkpoints."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editdecay.data.instruction_corpus import InstructionExample
from editdecay.finetuning.collate import (
    IGNORE_INDEX,
    TokenizedExample,
    collate,
    epoch_batches,
    tokenize_example,
)
from editdecay.finetuning.spec import FinetuneSpec
from editdecay.models import pad_id_of, unembedding
from editdecay.storage import atomic_directory

_STATE = "state.json"
_TENSORS = "trainable.pt"
_OPTIMIZER = "optimizer.pt"
_RNG = "rng.pt"


@dataclass
class TrainState:
    """Progress of one run; everything needed, with the tensors, to resume it exactly."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    elapsed_s: float = 0.0
    curve: list[dict[str, Any]] = field(default_factory=list)  # CurveProbe rows, each with its `step`


@dataclass(frozen=True)
class CurveProbe:
    """Measurements taken during training: `measure(model)` at step 0 (before the first update), every `every`
    optimizer steps and after the last one, in eval mode without gradients. Its rows (JSON-able dicts) are kept
    in the resumable state, so a resumed run's curve is complete. `measure` must not draw random numbers."""

    every: int
    measure: Callable[[nn.Module], list[dict[str, Any]]]

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"CurveProbe.every must be >= 1 step, got {self.every}")

    def due(self, step: int, total: int) -> bool:
        return step == 0 or step == total or step % self.every == 0

    def take(self, model: nn.Module, step: int) -> list[dict[str, Any]]:
        model.eval()
        try:
            with torch.no_grad():
                rows = self.measure(model)
        finally:
            model.train()
        return [{"step": step, **row} for row in rows]


def plan_steps(tokenized: Sequence[TokenizedExample], spec: FinetuneSpec) -> list[list[list[int]]]:
    """Optimizer steps, each a list of `grad_accum` micro-batches of example indices.

    `max_steps`, when set, replaces `epochs`: as many epochs as needed, cut at exactly `max_steps`.
    """
    lengths = [len(ex.input_ids) for ex in tokenized]
    steps: list[list[list[int]]] = []
    epoch = 0
    while (len(steps) < spec.max_steps) if spec.max_steps else (epoch < spec.epochs):
        batches = epoch_batches(lengths, spec.batch_size, spec.seed, epoch, spec.group_by_length)
        steps += [batches[i : i + spec.grad_accum] for i in range(0, len(batches), spec.grad_accum)]
        epoch += 1
    return steps[: spec.max_steps] if spec.max_steps else steps


def forward_pieces(batch: Sequence[int], lengths: Sequence[int], max_tokens: int | None) -> list[list[int]]:
    """`batch` cut, in order, into runs of rows whose padded size (rows x longest row) is at most `max_tokens`
    (a row longer than that is a piece of its own); the whole batch when `max_tokens` is None."""
    if max_tokens is None:
        return [list(batch)]
    pieces: list[list[int]] = []
    longest = 0
    for index in batch:
        longest_with = max(longest, lengths[index])
        if pieces and (len(pieces[-1]) + 1) * longest_with <= max_tokens:
            pieces[-1].append(index)
            longest = longest_with
        else:
            pieces.append([index])
            longest = lengths[index]
    return pieces


def learning_rate(step: int, total: int, spec: FinetuneSpec) -> float:
    """Linear warmup to spec.lr over max(warmup_steps, ceil(warmup_ratio * total)) steps, then a linear decay to
    zero (`lr_schedule: linear`) or spec.lr to the end (`constant`)."""
    assert spec.lr is not None
    warmup = max(spec.warmup_steps, math.ceil(spec.warmup_ratio * total))
    if step < warmup:
        return spec.lr * (step + 1) / warmup
    if spec.lr_schedule == "constant":
        return spec.lr
    return spec.lr * max(0.0, (total - step) / max(1, total - warmup))


def autocast(model: nn.Module, spec: FinetuneSpec) -> AbstractContextManager[Any]:
    if spec.compute_dtype not in ("bfloat16", "float32"):
        raise ValueError(
            f"compute_dtype {spec.compute_dtype!r} must be resolved first (FinetuneSpec.with_resolved_dtype)."
        )
    device = next(model.parameters()).device
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=spec.compute_dtype == "bfloat16")


LOSS_CHUNK_POSITIONS = 256  # positions per chunk of the chunked loss (full logits never exist at once)


def token_loss_sum(
    model: nn.Module, inputs: dict[str, torch.Tensor], *, chunked: bool = False, chunk: int = LOSS_CHUNK_POSITIONS
) -> torch.Tensor:
    """Summed next-token cross-entropy (float32) over the batch's target tokens.

    The unembedding runs only at the positions that predict a target: a pre-hook on it selects those
    rows of its input. With the loss on responses only that skips ~90% of the vocabulary projection and
    its activation memory; otherwise it still skips padding. `chunked`: the model's forward stops before the
    unembedding, whose input is kept, and the projection + cross-entropy run `chunk` positions at a time, each
    recomputed in the backward pass, so the (positions x vocabulary) logits never exist at once.
    """
    predicts = inputs["labels"][:, 1:] != IGNORE_INDEX
    keep = nn.functional.pad(predicts, (0, 1), value=False)  # position t predicts token t + 1
    head = unembedding(model)
    kept: dict[str, torch.Tensor] = {}

    def select(_module: nn.Module, args: tuple) -> tuple:
        rows = args[0][keep]
        if chunked:
            kept["hidden"] = rows
            rows = rows[:0]  # the model's own projection gets no position
        return (rows, *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
    finally:
        handle.remove()
    expected = 0 if chunked else int(keep.sum())
    if logits.shape[:-1] != (expected,):
        raise RuntimeError(
            f"{type(model).__name__} returned logits of shape {tuple(logits.shape)}: its forward must "
            "apply the output embedding once to every position."
        )
    labels = inputs["labels"][:, 1:][predicts]
    if not chunked:
        return nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)

    def chunk_loss(hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        chunk_logits = head(hidden).float()
        if cap:  # what the model's forward does after its projection (Gemma 2)
            chunk_logits = torch.tanh(chunk_logits / cap) * cap
        return nn.functional.cross_entropy(chunk_logits, targets, reduction="sum")

    hidden, total = kept["hidden"], logits.new_zeros((), dtype=torch.float32)
    for start in range(0, len(labels), chunk):
        part = slice(start, start + chunk)
        total = total + checkpoint(chunk_loss, hidden[part], labels[part], use_reentrant=False)
    return total


class Checkpoint:
    """The latest resumable state of one run, in one directory replaced atomically on every save."""

    def __init__(self, directory: Path, run_key: dict[str, Any]) -> None:
        self.directory = directory
        self.run_key = run_key

    def load(self, trained: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState | None:
        state_file = self.directory / _STATE
        if not state_file.is_file():
            return None
        saved = json.loads(state_file.read_text())
        if saved.get("run_key") != self.run_key:
            tqdm.write(
                f"Checkpoint {self.directory} belongs to a different run (spec, corpus or base model); starting clean."
            )
            return None
        tensors = torch.load(self.directory / _TENSORS, weights_only=True)
        trainable = _trainable(trained)
        if set(tensors) != set(trainable):
            raise RuntimeError(
                f"Checkpoint {self.directory} holds parameters {sorted(set(tensors) ^ set(trainable))} "
                "that do not match this run; delete it to start clean."
            )
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(tensors[name])
        optimizer.load_state_dict(torch.load(self.directory / _OPTIMIZER, weights_only=True))
        rng = torch.load(self.directory / _RNG, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        tqdm.write(f"Resuming from {self.directory} at step {saved['state']['step']}.")
        return TrainState(**saved["state"])

    def save(self, trained: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        with atomic_directory(self.directory) as staging:
            torch.save({n: p.detach() for n, p in _trainable(trained).items()}, staging / _TENSORS)
            torch.save(optimizer.state_dict(), staging / _OPTIMIZER)
            cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
            torch.save({"cpu": torch.get_rng_state(), "cuda": cuda}, staging / _RNG)
            (staging / _STATE).write_text(json.dumps({"run_key": self.run_key, "state": asdict(state)}))

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def train(
    trained: nn.Module,
    tokenized: Sequence[TokenizedExample],
    spec: FinetuneSpec,
    *,
    pad_id: int,
    checkpoint: Checkpoint | None = None,
    checkpoint_every_s: float = 300.0,
    progress: bool = True,
    desc: str = "finetune",
    probe: CurveProbe | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> TrainState:
    """Train the parameters of `trained` that require grad; deterministic given spec.seed.

    Each optimizer step's loss is the mean over every target token of its micro-batches, so the
    result does not depend on how the step is split into micro-batches. `after_step(trained)` runs after every
    optimizer step, without gradients (a constraint on the weights, e.g. a projection).
    """
    trainable = _trainable(trained)
    optimizer = torch.optim.AdamW(trainable.values(), lr=spec.lr or 0.0, weight_decay=spec.weight_decay)
    steps = plan_steps(tokenized, spec)
    lengths = [len(example.input_ids) for example in tokenized]
    torch.manual_seed(spec.seed)
    state = (checkpoint.load(trained, optimizer) if checkpoint else None) or TrainState()
    device = next(trained.parameters()).device
    trained.train()
    if spec.gradient_checkpointing:
        activation_checkpointing(trained, True)
    bar = tqdm(total=len(steps), initial=state.step, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    started, last_save = time.monotonic() - state.elapsed_s, time.monotonic()
    try:
        if probe and state.step == 0 and not state.curve:
            state.curve += probe.take(trained, 0)
            started = time.monotonic()  # the curve's measurements are not training time
        for step in range(state.step, len(steps)):
            group = steps[step]
            n_targets = max(1, sum(tokenized[i].n_targets for batch in group for i in batch))
            for group_params in optimizer.param_groups:
                group_params["lr"] = learning_rate(step, len(steps), spec)
            step_loss, step_tokens = 0.0, 0
            for piece in (p for batch in group for p in forward_pieces(batch, lengths, spec.max_forward_tokens)):
                inputs = {k: v.to(device) for k, v in collate([tokenized[i] for i in piece], pad_id).items()}
                with autocast(trained, spec):
                    loss = token_loss_sum(trained, inputs, chunked=spec.gradient_checkpointing) / n_targets
                loss.backward()
                step_loss += loss.item()
                step_tokens += int(inputs["attention_mask"].sum())
            if spec.max_grad_norm:
                nn.utils.clip_grad_norm_(list(trainable.values()), spec.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                with torch.no_grad():
                    after_step(trained)
            state.step, state.tokens = step + 1, state.tokens + step_tokens
            state.losses.append(step_loss)
            state.elapsed_s = time.monotonic() - started
            if probe and probe.due(state.step, len(steps)):
                measured = time.monotonic()
                state.curve += probe.take(trained, state.step)
                started += time.monotonic() - measured
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{state.tokens / max(state.elapsed_s, 1e-9):.0f}")
            if checkpoint and state.step < len(steps) and time.monotonic() - last_save >= checkpoint_every_s:
                checkpoint.save(trained, optimizer, state)
                last_save = time.monotonic()
    finally:
        bar.close()
        if spec.gradient_checkpointing:
            activation_checkpointing(trained, False)
        trained.eval()
    return state


def activation_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Recompute each block's activations in the backward pass (transformers' gradient checkpointing,
    non-reentrant: no input needs requires_grad, and frozen weights stay frozen)."""
    base = getattr(model, "get_base_model", None)
    target = base() if callable(base) else model
    if not isinstance(target, PreTrainedModel) or not target.supports_gradient_checkpointing:
        raise ValueError(f"{type(target).__name__} does not support gradient checkpointing.")
    if enabled:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        target.gradient_checkpointing_disable()


@torch.no_grad()
def corpus_loss(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[InstructionExample], spec: FinetuneSpec
) -> float:
    """Mean next-token cross-entropy over the target tokens of `examples` (tokenized as for training).

    Uses spec.cutoff_len, train_on_inputs, batch_size and compute_dtype; the model is put in eval mode.
    """
    tokenized = [tokenize_example(tokenizer, ex, spec.cutoff_len, spec.train_on_inputs) for ex in examples]
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(tokenized), spec.batch_size):
        chunk = tokenized[start : start + spec.batch_size]
        inputs = {k: v.to(device) for k, v in collate(chunk, pad_id_of(tokenizer)).items()}
        with autocast(model, spec):
            total += token_loss_sum(model, inputs).item()
        count += sum(ex.n_targets for ex in chunk)
    if count == 0:
        raise ValueError("No target tokens to score: every example's response lies beyond cutoff_len.")
    return total / count
