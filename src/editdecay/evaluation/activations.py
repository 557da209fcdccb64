"""Per-layer activation drift and directional similarity between model groups (docs/algorithms.md §7, study Eq. 2-6).

h_l(x) is the output of block l (the residual stream after it) at one token of prompt x: the last prompt
token, or the last token of the subject. For each layer, over prompts X:
  drift "A-B"        = mean_x ||h^A_l(x) - h^B_l(x)||
  similarity "cos(A-B, C-D)" = mean_x <Δ1, Δ2> / (||Δ1|| ||Δ2|| + 1e-8), Δ1 = h^A - h^B, Δ2 = h^C - h^D.
Prompts are streamed in rounds and only per-layer sums are kept, so memory does not grow with |X|, and the groups
are used one after another, so one resident model can serve them all (evaluation/model_groups.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from editdecay.data import EditRequest
from editdecay.data.tasks import TaskItem, alpaca_prompt
from editdecay.evaluation.batching import PadSide, inference, pad_batch, special_prefix
from editdecay.evaluation.model_groups import ModelGroups, as_model_groups
from editdecay.models import ModelShape, arch_for, get_module, num_blocks, pad_id_of
from editdecay.models.hooks import hidden_of

EPS = 1e-8
# What one round of prompts may hold of captured states, all groups together (see activation_shift).
ROUND_BYTES = 1 << 30
Position = Literal["last", "subject"]
DRIFTS: dict[str, tuple[str, str]] = {
    "Med-M": ("Med", "M"),
    "Mft-M": ("Mft", "M"),
    "Med_ft-Med": ("Med_ft", "Med"),
    "Med_ft-Mft": ("Med_ft", "Mft"),
}
SIMILARITIES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    # Does fine-tuning move activations along the edit direction?
    "cos(Med-M, Mft-M)": (("Med", "M"), ("Mft", "M")),
    # Is the edit's direction still there after fine-tuning?
    "cos(Med_ft-Mft, Med-M)": (("Med_ft", "Mft"), ("Med", "M")),
    # Does fine-tuning shift the edited model the way it shifts the unedited one?
    "cos(Med_ft-Med, Mft-M)": (("Med_ft", "Med"), ("Mft", "M")),
}


@dataclass(frozen=True)
class ProbePrompt:
    """A probe prompt; `subject_end` is the character index just past the subject (None: no subject)."""

    text: str
    source: str = "edit"
    subject_end: int | None = None


def _subject_end(text: str, subject: str) -> int | None:
    start = text.find(subject)
    return None if start < 0 else start + len(subject)


def probe_prompts(
    requests: Sequence[EditRequest],
    task_items: Sequence[TaskItem] = (),
    *,
    limit: int | None = None,
    paraphrases: bool = True,
) -> list[ProbePrompt]:
    """Edit prompts (rewrite, and paraphrases) with their subject, plus downstream prompts (Alpaca format).

    `limit` caps each of the two sources; downstream items are taken round-robin over tasks.
    """
    edit: list[ProbePrompt] = []
    for request in requests:
        start = len(request.prompt_parts[0])  # where the subject goes (braces unescaped)
        edit.append(ProbePrompt(request.prompt, "edit", start + len(request.subject)))
        if paraphrases:
            edit += [ProbePrompt(p, "edit", _subject_end(p, request.subject)) for p in request.paraphrase_prompts]
    by_task: dict[str, list[TaskItem]] = {}
    for item in task_items:
        by_task.setdefault(item.task, []).append(item)
    interleaved = [
        queue[i]
        for i in range(max(map(len, by_task.values()), default=0))
        for queue in by_task.values()
        if i < len(queue)
    ]
    downstream = [ProbePrompt(alpaca_prompt(item.instruction, item.input), "downstream") for item in interleaved]
    if limit is not None:
        edit, downstream = edit[:limit], downstream[:limit]
    return edit + downstream


def _unwrapped(model: nn.Module) -> nn.Module:
    get_base_model = getattr(model, "get_base_model", None)  # a PEFT wrapper's blocks are its base model's
    return get_base_model() if get_base_model is not None else model


def _blocks(model: nn.Module) -> list[nn.Module]:
    base = _unwrapped(model)
    arch = arch_for(base)
    return [get_module(base, arch.block_path(i)) for i in range(num_blocks(base))]


@contextmanager
def _capture(blocks: list[nn.Module], positions: torch.Tensor, out: dict[int, torch.Tensor]) -> Iterator[None]:
    """Keep only each block's output at the rows' positions (not the whole sequence)."""
    handles = []
    for layer, module in enumerate(blocks):

        def hook(_mod: nn.Module, _args: tuple, output: torch.Tensor | tuple, _layer: int = layer) -> None:
            hidden = hidden_of(output)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            out[_layer] = hidden[rows, positions.to(hidden.device)].float()

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _tokenize(tokenizer, prompts: Sequence[ProbePrompt], position: Position) -> list[tuple[list[int], int, bool]]:
    """Token ids, the index read, and whether it is a subject token (else the last token)."""
    prefix = list(special_prefix(tokenizer))
    encoded = tokenizer([p.text for p in prompts], add_special_tokens=False, return_offsets_mapping=True)
    result = []
    for prompt, ids, offsets in zip(prompts, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        ids = prefix + list(ids)
        index, on_subject = len(ids) - 1, False
        if position == "subject" and prompt.subject_end is not None:
            inside = [i for i, (start, _end) in enumerate(offsets) if start < prompt.subject_end]
            if inside:
                index, on_subject = len(prefix) + inside[-1], True
        result.append((ids, index, on_subject))
    return result


def _round_size(layers: int, width: int, groups: int, batch_size: int) -> int:
    """Prompts per round: as many whole batches as keep every group's captured states (float64) within
    ROUND_BYTES, and at least one batch."""
    per_prompt = layers * width * 8 * groups
    return max(1, ROUND_BYTES // (per_prompt * batch_size)) * batch_size


def _hidden_states(
    model: nn.Module,
    encoded: list[tuple[list[int], int, bool]],
    chunk: list[int],
    pad: int,
    side: PadSide,
) -> torch.Tensor:
    """(prompts, layers, width) float64: every block's output at each prompt's read position."""
    blocks = _blocks(model)
    with inference(model) as device:
        batch = pad_batch([encoded[i][0] for i in chunk], pad, side, device)
        positions = torch.tensor([batch.offsets[r] + encoded[i][1] for r, i in enumerate(chunk)])
        captured: dict[int, torch.Tensor] = {}
        with _capture(blocks, positions, captured):
            model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                logits_to_keep=1,
            )
    return torch.stack([captured[layer] for layer in range(len(blocks))], dim=1).cpu().double()


def activation_shift(
    models: Mapping[str, nn.Module] | ModelGroups,
    tokenizer,
    prompts: Sequence[str] | Sequence[ProbePrompt],
    *,
    position: Position = "last",
    batch_size: int = 16,
    progress: bool = True,
    by_source: bool = False,
) -> pd.DataFrame:
    """Per-layer mean drift for the pairs Med-M, Mft-M, Med_ft-Med, Med_ft-Mft and mean directional cosine
    for the SIMILARITIES pairs, over the prompts; pairs needing a missing group are skipped.

    Long format, one row per (prompt_set, layer, pair): `drift` is set on drift rows and `similarity` on
    similarity rows. `position` records which token was read; with "subject", prompts without a subject
    use their last token (`n_subject` counts the prompts read at a subject token). `by_source` adds rows per
    prompt source ("edit", "downstream") beside "all".

    The groups are used one at a time (`ModelGroups.use`, so one resident model serves them all): prompts go in
    rounds, each round runs every group over its prompts and keeps their states, and only per-layer sums outlive
    the round, so memory is bounded by ROUND_BYTES whatever the number of prompts.
    """
    if position not in ("last", "subject"):
        raise ValueError(f"position must be 'last' or 'subject', got {position!r}")
    groups = as_model_groups(models)
    names = list(groups.names)
    probes = [p if isinstance(p, ProbePrompt) else ProbePrompt(p, "text") for p in prompts]
    if not probes:
        raise ValueError("activation_shift got no prompts.")
    drifts = {name: pair for name, pair in DRIFTS.items() if set(pair) <= set(names)}
    sims = {name: pairs for name, pairs in SIMILARITIES.items() if set(pairs[0]) | set(pairs[1]) <= set(names)}
    if not drifts:
        raise ValueError(f"activation_shift needs at least a pair of groups among {sorted(DRIFTS)}; got {names}.")
    shapes = {}
    for group in names:
        with groups.use(group) as model:
            shapes[group] = (len(_blocks(model)), ModelShape.of(_unwrapped(model)).hidden_size)
    if len(set(shapes.values())) != 1:
        raise ValueError(f"The models have different numbers of blocks or widths: {shapes}")
    layers, width = shapes[names[0]]
    encoded = _tokenize(tokenizer, probes, position)
    sets = ["all", *sorted({p.source for p in probes})] if by_source else ["all"]
    sums = {(s, name): torch.zeros(layers, dtype=torch.float64) for s in sets for name in (*drifts, *sims)}
    counts = dict.fromkeys(sets, 0)
    subject_counts = dict.fromkeys(sets, 0)
    pad = pad_id_of(tokenizer)
    side: PadSide = "left" if tokenizer.padding_side == "left" else "right"
    order = sorted(range(len(probes)), key=lambda i: len(encoded[i][0]), reverse=True)
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    per_round = _round_size(layers, width, len(names), batch_size) // batch_size
    bar = tqdm(total=len(order) * len(names), desc="activations", unit="prompt", disable=not progress, leave=False)
    for first in range(0, len(chunks), per_round):
        round_chunks = chunks[first : first + per_round]
        hidden: dict[str, list[torch.Tensor]] = {}
        for group in names:
            with groups.use(group) as model:
                hidden[group] = []
                for chunk in round_chunks:
                    hidden[group].append(_hidden_states(model, encoded, chunk, pad, side))
                    bar.update(len(chunk))
        for index, chunk in enumerate(round_chunks):
            states = {group: hidden[group][index] for group in names}
            per_prompt = {name: (states[a] - states[b]).norm(dim=-1) for name, (a, b) in drifts.items()}
            for name, ((a, b), (c, d)) in sims.items():
                d1, d2 = states[a] - states[b], states[c] - states[d]
                per_prompt[name] = (d1 * d2).sum(-1) / (d1.norm(dim=-1) * d2.norm(dim=-1) + EPS)
            for row, i in enumerate(chunk):
                for s in ("all", probes[i].source) if by_source else ("all",):
                    counts[s] += 1
                    subject_counts[s] += encoded[i][2]
                    for name, values in per_prompt.items():
                        sums[(s, name)] += values[row]
    bar.close()
    records = []
    for s in sets:
        for name in (*drifts, *sims):
            means = (sums[(s, name)] / counts[s]).tolist()
            for layer, value in enumerate(means):
                is_drift = name in drifts
                records.append(
                    {
                        "prompt_set": s,
                        "layer": layer,
                        "pair": name,
                        "drift": value if is_drift else float("nan"),
                        "similarity": float("nan") if is_drift else value,
                        "position": position,
                        "n_prompts": counts[s],
                        "n_subject": subject_counts[s],
                    }
                )
    return pd.DataFrame.from_records(records)
