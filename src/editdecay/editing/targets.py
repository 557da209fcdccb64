"""Target values z (ALGORITHMS §1.3), optimised for a whole batch of requests at once.

Each request r owns one free vector δ_r added to the output of block L_z at the subject's last token of
its rewriting prompts (every context + prompt + target tokens but the last) and of its essence prompt
"{s} is a". Per request the loss is

    mean_contexts( -mean_target_tokens log P(o_t | ...) ) + kl_factor * KL(P_now || P_init)
    + v_weight_decay * ||δ_r|| / ||z_init_r||^2,

minimised with Adam (one state row per request; rows are independent, so the batch sums their losses)
with the per-row early stop and norm clamp of the paper. Math-preserving speed-ups: the hidden states up
to block L_z do not depend on δ, so they are computed once and blocks 0..L_z are replaced by a replay of
that cache during the steps; the unembedding is applied only at the positions the loss reads; rows that
have converged leave the batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from editdecay.data import EditRequest
from editdecay.editing.subject import essence_tokens, pad_id, pad_right, prompt_tokens, target_ids
from editdecay.models import arch_for, block, final_norm, num_blocks, unembedding
from editdecay.models.hooks import hidden_of, record, replace_hidden, run_until

log = logging.getLogger(__name__)

_BETAS = (0.9, 0.999)
_EPS = 1e-8


class TargetOptimisationError(RuntimeError):
    """The target optimisation produced NaN/inf; the message names the requests."""


@dataclass(frozen=True)
class TargetSettings:
    z_layer: int
    steps: int = 25
    lr: float = 0.5
    weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    early_stop_loss: float = 0.05


@dataclass
class TargetResult:
    """z (n, d) and z_init (n, d) in float32, with per-request diagnostics."""

    z: torch.Tensor
    z_init: torch.Tensor
    steps: list[int]
    final_loss: list[float]
    final_nll: list[float]
    seconds: float
    forward_steps: int = 0  # number of batched optimisation steps run (all chunks)
    per_request: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Batch:
    """All sequences of a chunk of requests, right-padded, with what the loss reads from each."""

    input_ids: torch.Tensor  # (S, T)
    attention_mask: torch.Tensor
    owner: torch.Tensor  # (S,) request index within the chunk
    subject_index: torch.Tensor  # (S,)
    is_essence: torch.Tensor  # (S,) bool
    # Flattened target positions over the rewriting sequences.
    tgt_seq: torch.Tensor
    tgt_pos: torch.Tensor
    tgt_id: torch.Tensor
    n_requests: int
    n_contexts: int


def compute_targets(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    contexts: Sequence[str],
    settings: TargetSettings,
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> TargetResult:
    """Optimise one z per request; `batch_size` requests are optimised together (1: one at a time)."""
    if not 0 <= settings.z_layer < num_blocks(model):
        raise ValueError(f"z layer {settings.z_layer} is outside the model ({num_blocks(model)} blocks).")
    start = time.perf_counter()
    zs, inits, steps, losses, nlls = [], [], [], [], []
    total_steps = 0
    with tqdm(total=len(requests), desc="target values", unit="req", disable=not progress) as bar:
        for first in range(0, len(requests), batch_size):
            chunk = list(requests[first: first + batch_size])
            batch = _build_batch(tokenizer, chunk, contexts)
            out = _optimise(model, batch, settings, [r.case_id for r in chunk])
            zs.append(out[0])
            inits.append(out[1])
            steps.extend(out[2])
            losses.extend(out[3])
            nlls.extend(out[4])
            total_steps += out[5]
            bar.update(len(chunk))
    result = TargetResult(torch.cat(zs), torch.cat(inits), steps, losses, nlls, time.perf_counter() - start,
                          total_steps)
    result.per_request = [{"case_id": r.case_id, "steps": s, "loss": lo, "nll": nl}  # type: ignore[dict-item]
                          for r, s, lo, nl in zip(requests, steps, losses, nlls, strict=True)]
    return result


def _build_batch(tokenizer, requests: list[EditRequest], contexts: Sequence[str]) -> _Batch:
    sequences: list[list[int]] = []
    owner, subject_index, is_essence = [], [], []
    tgt_seq, tgt_pos, tgt_id = [], [], []
    for r_index, request in enumerate(requests):
        target = target_ids(tokenizer, request.target_new)
        for context in contexts:
            prompt = prompt_tokens(tokenizer, context, request)
            seq_index = len(sequences)
            sequences.append(prompt.ids + target[:-1])
            owner.append(r_index)
            subject_index.append(prompt.subject_index)
            is_essence.append(False)
            for j, token in enumerate(target):
                tgt_seq.append(seq_index)
                tgt_pos.append(len(prompt.ids) - 1 + j)
                tgt_id.append(token)
        essence = essence_tokens(tokenizer, request)
        sequences.append(essence.ids)
        owner.append(r_index)
        subject_index.append(essence.subject_index)
        is_essence.append(True)
    input_ids, mask = pad_right(sequences, pad_id(tokenizer))
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return _Batch(input_ids, mask, as_long(owner), as_long(subject_index), torch.tensor(is_essence),
                  as_long(tgt_seq), as_long(tgt_pos), as_long(tgt_id), len(requests), len(contexts))


def _optimise(
    model: nn.Module, batch: _Batch, settings: TargetSettings, case_ids: list[str]
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[float], list[float], int]:
    device = next(model.parameters()).device
    n = batch.n_requests
    z_block = block(model, settings.z_layer)
    cached, template = _block_output(model, z_block, batch, device)
    bare_rows = torch.nonzero(~batch.is_essence).squeeze(1).view(n, batch.n_contexts)[:, 0]
    z_init = cached[bare_rows, batch.subject_index[bare_rows]].float()
    max_norm = settings.clamp_norm_factor * z_init.norm(dim=1)
    delta = torch.zeros_like(z_init)
    adam_m = torch.zeros_like(delta)
    adam_v = torch.zeros_like(delta)
    active = torch.ones(n, dtype=torch.bool)
    steps_taken = [settings.steps] * n
    final_loss = [float("nan")] * n
    final_nll = [float("nan")] * n
    kl_init: torch.Tensor | None = None
    batched_steps = 0
    for step in range(settings.steps):
        rows = torch.nonzero(active).squeeze(1)
        if rows.numel() == 0:
            break
        d = delta[rows].clone().requires_grad_(True)
        nll, log_p_kl = _forward_losses(model, batch, rows, d, cached, template, z_block, settings.z_layer,
                                        device)
        batched_steps += 1
        if kl_init is None:  # step 0: δ = 0 for every row, so this is the unedited distribution
            kl_init = log_p_kl.detach()
        ref = kl_init[rows]
        kl = (log_p_kl.exp() * (log_p_kl - ref)).sum(dim=1)
        decay = settings.weight_decay * d.norm(dim=1) / z_init[rows].norm(dim=1) ** 2
        loss = nll + settings.kl_factor * kl + decay
        if not torch.isfinite(loss).all():
            bad = [case_ids[int(rows[i])] for i in torch.nonzero(~torch.isfinite(loss)).squeeze(1)]
            raise TargetOptimisationError(
                f"NaN/inf loss during target optimisation at step {step} for edit requests {bad}. "
                "Use a float32 model, or lower v_lr / clamp_norm_factor."
            )
        for i, row in enumerate(rows.tolist()):
            final_loss[row] = float(loss[i].detach())
            final_nll[row] = float(nll[i].detach())
        done = loss.detach() < settings.early_stop_loss
        for row in rows[done].tolist():
            steps_taken[row] = step
        if step == settings.steps - 1:
            break
        keep = ~done
        if not keep.any():
            active[rows] = False
            break
        (grad,) = torch.autograd.grad(loss[keep].sum(), d)
        active[rows[done]] = False
        update_rows = rows[keep]
        _adam_step(delta, adam_m, adam_v, grad[keep], update_rows, step + 1, settings.lr)
        _clamp_rows(delta, update_rows, max_norm)
    return (z_init + delta).cpu(), z_init.cpu(), steps_taken, final_loss, final_nll, batched_steps


def _adam_step(
    param: torch.Tensor, m: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor,
    t: int, lr: float,
) -> None:
    """torch.optim.Adam (no weight decay) on the given rows; every active row has taken t steps."""
    m[rows] = _BETAS[0] * m[rows] + (1 - _BETAS[0]) * grad
    v[rows] = _BETAS[1] * v[rows] + (1 - _BETAS[1]) * grad * grad
    bias1 = 1 - _BETAS[0] ** t
    bias2 = 1 - _BETAS[1] ** t
    denom = (v[rows].sqrt() / bias2**0.5) + _EPS
    param[rows] = param[rows] - (lr / bias1) * m[rows] / denom


def _clamp_rows(delta: torch.Tensor, rows: torch.Tensor, max_norm: torch.Tensor) -> None:
    norms = delta[rows].norm(dim=1)
    scale = torch.where(norms > max_norm[rows], max_norm[rows] / norms, torch.ones_like(norms))
    delta[rows] = delta[rows] * scale[:, None]


def _block_output(
    model: nn.Module, z_block: nn.Module, batch: _Batch, device: torch.device
) -> tuple[torch.Tensor, object]:
    """Block L_z's hidden output for every sequence (no grad) and one raw output as a format template."""
    raw: dict[str, object] = {}

    def keep(_mod: nn.Module, _args: tuple, output: object) -> None:
        raw["out"] = output

    handle = z_block.register_forward_hook(keep)
    try:
        with torch.no_grad():
            run_until(model, z_block, input_ids=batch.input_ids.to(device),
                      attention_mask=batch.attention_mask.to(device), use_cache=False)
    finally:
        handle.remove()
    output = raw["out"]
    return hidden_of(output).detach(), output  # type: ignore[arg-type]


@contextmanager
def _replay(model: nn.Module, z_block: nn.Module, z_layer: int, template: object, hidden: torch.Tensor
            ) -> Iterator[None]:
    """While inside: blocks 0..L_z-1 pass their input through and block L_z returns `hidden`, so a
    forward pass computes only blocks L_z+1.. (plus the cheap embedding)."""

    def passthrough(*args: object, **kwargs: object) -> object:
        return replace_hidden(template, args[0] if args else kwargs["hidden_states"])  # type: ignore[arg-type]

    def replay(*_args: object, **_kwargs: object) -> object:
        return replace_hidden(template, hidden)  # type: ignore[arg-type]

    with ExitStack() as stack:
        for i in range(z_layer):
            stack.enter_context(_forward_replaced(block(model, i), passthrough))
        stack.enter_context(_forward_replaced(z_block, replay))
        yield


@contextmanager
def _forward_replaced(module: nn.Module, forward: object) -> Iterator[None]:
    module.forward = forward  # type: ignore[method-assign]  # instance attribute shadows the class method
    try:
        yield
    finally:
        del module.forward


def _forward_losses(
    model: nn.Module, batch: _Batch, rows: torch.Tensor, delta: torch.Tensor, cached: torch.Tensor,
    template: object, z_block: nn.Module, z_layer: int, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per active request: mean rewriting NLL (len(rows),) and the essence log-distribution (len(rows), V)."""
    local = torch.full((batch.n_requests,), -1, dtype=torch.long)
    local[rows] = torch.arange(rows.numel())
    seq_local = local[batch.owner]
    seqs = torch.nonzero(seq_local >= 0).squeeze(1)
    owner = seq_local[seqs]
    lengths = batch.attention_mask[seqs].sum(dim=1)
    width = int(lengths.max())
    input_ids = batch.input_ids[seqs, :width].to(device)
    mask = batch.attention_mask[seqs, :width].to(device)
    hidden = cached[seqs.to(device), :width]
    add = torch.zeros_like(hidden, dtype=delta.dtype).index_put(
        (torch.arange(seqs.numel(), device=device), batch.subject_index[seqs].to(device)),
        delta[owner.to(device)], accumulate=True)
    hidden = hidden + add.to(hidden.dtype)
    norm_path = arch_for(model).final_norm_path
    with _replay(model, z_block, z_layer, template, hidden), record(model, [norm_path]) as out:
        run_until(model, final_norm(model), input_ids=input_ids, attention_mask=mask, use_cache=False)
    normed = out[norm_path]
    # Rewriting targets of the active sequences.
    seq_pos = torch.full((batch.input_ids.shape[0],), -1, dtype=torch.long)
    seq_pos[seqs] = torch.arange(seqs.numel())
    tgt_row = seq_pos[batch.tgt_seq]
    use = tgt_row >= 0
    t_rows, t_pos, t_ids = tgt_row[use], batch.tgt_pos[use], batch.tgt_id[use]
    log_p = _log_probs(model, normed[t_rows.to(device), t_pos.to(device)])
    token_nll = -log_p.gather(1, t_ids.to(device)[:, None]).squeeze(1)
    # Mean over each sequence's target tokens, then over each request's contexts.
    n_seq = seqs.numel()
    seq_sum = torch.zeros(n_seq, dtype=token_nll.dtype, device=device).index_add(0, t_rows.to(device), token_nll)
    seq_count = torch.zeros(n_seq, dtype=token_nll.dtype, device=device).index_add(
        0, t_rows.to(device), torch.ones_like(token_nll))
    essence = batch.is_essence[seqs]
    rewrite = torch.nonzero(~essence).squeeze(1)
    per_seq = seq_sum[rewrite.to(device)] / seq_count[rewrite.to(device)]
    nll = torch.zeros(rows.numel(), dtype=per_seq.dtype, device=device).index_add(
        0, owner[rewrite].to(device), per_seq) / batch.n_contexts
    ess = torch.nonzero(essence).squeeze(1)
    ess_sorted = ess[torch.argsort(owner[ess])]
    kl_log_p = _log_probs(model, normed[ess_sorted.to(device), batch.subject_index[seqs][ess_sorted].to(device)])
    return nll, kl_log_p


def _log_probs(model: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """Log-softmax of the logits of already-normalised hidden states (final soft-capping included)."""
    logits = unembedding(model)(normed).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.log_softmax(logits, dim=-1)
