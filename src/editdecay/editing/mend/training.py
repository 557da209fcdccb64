"""Training MEND's editor network on edit records (docs/algorithms.md §10), resumable from checkpoints.

Each step edits a batch of training records with the current network and minimises
c_edit * NLL(edited model; rewrite and paraphrase prompts -> new target) + c_loc * KL(base || edited; locality
prompts); the base model stays frozen, only the network and the per-layer steps learn. A checkpoint (network,
optimiser, sampler state, history) is written atomically every `checkpoint_every` steps, so a killed training
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from editdecay.data import EditRequest, load_edit_requests
from editdecay.editing.edit_loss import model_logits, target_batch, target_nll
from editdecay.editing.mend.apply import (
    EditedLayers,
    edit_batch,
    edit_factors,
    locality_kl,
    logits_with,
    network_deltas,
)
from editdecay.editing.mend.hparams import MendHyperParams
from editdecay.editing.mend.network import MendNetwork
from editdecay.storage import atomic_write_bytes

log = logging.getLogger(__name__)

HELDOUT_SCORED = 16  # held-out records scored at each checkpoint


@dataclass(frozen=True)
class TrainingRecords:
    train: list[EditRequest]
    heldout: list[EditRequest]
    digest: str  # of every field training reads, in order


def training_records(hp: MendHyperParams) -> TrainingRecords:
    """The records MEND trains on (zsRE: the `alt` answer is the edit) and its held-out tail. Malformed records (a
    warning counts them) and records without a locality prompt (the locality loss needs one) are left out."""
    if hp.train_data is None:
        raise ValueError(
            "MEND needs training records: set editor.hparams.train_data to an edit dataset with locality prompts "
            "(the zsRE MEND training file, a CounterFact file) or to `builtin`."
        )
    records = [
        r
        for r in load_edit_requests(hp.train_data, hp.train_records, zsre_target="alt", on_invalid="skip")
        if r.neighborhood
    ]
    if len(records) < 2:
        raise ValueError(
            f"{hp.train_data}: MEND needs at least 2 records with a locality prompt, found {len(records)}."
        )
    heldout = max(1, round(hp.heldout_fraction * len(records)))
    content = [
        [r.case_id, r.prompt, r.target_new, list(r.paraphrase_prompts), [[n.prompt, n.answer] for n in r.neighborhood]]
        for r in records
    ]
    digest = hashlib.sha256(json.dumps(content).encode()).hexdigest()[:20]
    return TrainingRecords(records[:-heldout], records[-heldout:], digest)


@dataclass
class TrainedMend:
    network: MendNetwork
    meta: dict[str, Any] = field(default_factory=dict)  # dims, records, steps, history, seconds


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No gradient for the base model's parameters (restored afterwards); eval mode (no dropout)."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)


def _losses(
    model: nn.Module,
    tokenizer,
    network: MendNetwork,
    edited: EditedLayers,
    requests: Sequence[EditRequest],
) -> dict[str, torch.Tensor]:
    """One training batch: the edit (factors -> deltas), then the edit and locality losses of the edited model."""
    device = next(model.parameters()).device
    factors = edit_factors(model, edited, edit_batch(tokenizer, requests).to(device))
    if network.training:
        for index, layer_factors in enumerate(factors):
            network.observe(index, layer_factors)
    deltas = network_deltas(network, edited, factors)
    prompts = [r.prompt for r in requests] + [r.paraphrase_prompts[0] for r in requests if r.paraphrase_prompts]
    targets = [r.target_new for r in requests] + [r.target_new for r in requests if r.paraphrase_prompts]
    post = target_batch(tokenizer, prompts, targets).to(device)
    edit_nll = target_nll(logits_with(model, deltas, post), post)
    loc = target_batch(
        tokenizer, [r.neighborhood[0].prompt for r in requests], [r.neighborhood[0].answer for r in requests]
    ).to(device)
    with torch.no_grad():
        base_logits = model_logits(model, loc)
    kl = locality_kl(base_logits, logits_with(model, deltas, loc), loc.attention_mask)
    return {"edit_nll": edit_nll[: len(requests)].mean(), "edit_nll_all": edit_nll.mean(), "loc_kl": kl}


def heldout_scores(
    model: nn.Module,
    tokenizer,
    network: MendNetwork,
    edited: EditedLayers,
    records: Sequence[EditRequest],
    hp: MendHyperParams,
) -> dict[str, float]:
    """Mean post-edit target NLL of held-out edits (rewrite prompts), their pre-edit NLL, and the locality KL."""
    device = next(model.parameters()).device
    chosen = list(records[:HELDOUT_SCORED])
    was = network.training
    network.eval()
    post, loc, pre = [], [], []
    try:
        for first in range(0, len(chosen), hp.train_batch_size):
            part = chosen[first : first + hp.train_batch_size]
            scores = _losses(model, tokenizer, network, edited, part)
            post.append(float(scores["edit_nll"].detach()) * len(part))
            loc.append(float(scores["loc_kl"].detach()) * len(part))
            batch = edit_batch(tokenizer, part).to(device)
            with torch.no_grad():
                pre.append(float(target_nll(model_logits(model, batch), batch).sum()))
    finally:
        network.train(was)
    n = len(chosen)
    return {"heldout_edit_nll": sum(post) / n, "heldout_nll_before": sum(pre) / n, "heldout_loc_kl": sum(loc) / n}


def train_network(
    model: nn.Module,
    tokenizer,
    hp: MendHyperParams,
    records: TrainingRecords,
    checkpoint: Path,
    *,
    progress: bool = True,
) -> TrainedMend:
    """Train (or resume training of) the editor network for `model`'s `hp.layers`."""
    edited = EditedLayers.of(model, hp.layers)
    m, d = edited.shape(model)
    torch.manual_seed(hp.train_seed)
    network = MendNetwork(m, d, len(hp.layers), hp.hidden, hp.edit_lr).to(next(model.parameters()).device)
    optimiser = torch.optim.Adam(
        [{"params": network.network_parameters(), "lr": hp.lr}, {"params": [network.alpha], "lr": hp.lr_lr}]
    )
    sampler = torch.Generator().manual_seed(hp.train_seed)
    start, history, seconds = 0, [], 0.0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"])
        start, history, seconds = int(state["step"]), list(state["history"]), float(state["seconds"])
        log.info("MEND training resumes at step %d of %d (%s)", start, hp.train_steps, checkpoint)

    def save_checkpoint(step: int) -> None:
        buffer = io.BytesIO()
        state = {
            "network": network.state_dict(),
            "optimizer": optimiser.state_dict(),
            "sampler": sampler.get_state(),
            "step": step,
            "history": history,
            "seconds": seconds,
        }
        torch.save(state, buffer)
        atomic_write_bytes(checkpoint, buffer.getvalue())

    with frozen(model):
        if start == 0:
            history.append({"step": 0, **heldout_scores(model, tokenizer, network, edited, records.heldout, hp)})
        bar = tqdm(range(start, hp.train_steps), desc="training MEND", unit="step", disable=not progress, leave=False)
        tick = time.perf_counter()
        for step in bar:
            network.train()
            chosen = torch.randint(len(records.train), (hp.train_batch_size,), generator=sampler).tolist()
            scores = _losses(model, tokenizer, network, edited, [records.train[i] for i in chosen])
            loss = hp.c_edit * scores["edit_nll_all"] + hp.c_loc * scores["loc_kl"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            shown = {name: float(value.detach()) for name, value in scores.items()}
            bar.set_postfix(edit=f"{shown['edit_nll_all']:.3f}", loc=f"{shown['loc_kl']:.4f}")
            done = step + 1
            if done % hp.checkpoint_every == 0 or done == hp.train_steps:
                seconds += time.perf_counter() - tick
                heldout = heldout_scores(model, tokenizer, network, edited, records.heldout, hp)
                history.append({"step": done, "train_loss": float(loss.detach()), **heldout})
                save_checkpoint(done)
                tick = time.perf_counter()
        bar.close()
    network.eval()
    meta = {
        "m": m,
        "d": d,
        "layers": list(hp.layers),
        "weights": edited.weight_names,
        "hidden": hp.hidden,
        "edit_lr": hp.edit_lr,
        "train_data": hp.train_data,
        "records": {"train": len(records.train), "heldout": len(records.heldout), "digest": records.digest},
        "steps": hp.train_steps,
        "history": history,
        "seconds": round(seconds, 1),
        "alpha": [float(a) for a in network.alpha.detach()],
    }
    return TrainedMend(network, meta)
