"""Target values z (docs/algorithms.md §1.3), optimised for a whole batch of requests at once.

Each request r owns one free vector δ_r added to the output of block L_z at the subject's last token of
its rewriting prompts (every context + prompt + target tokens but the last) and of its essence prompt
"{s} is a". Per request the loss is

    mean_contexts( -mean_target_tokens log P(o_t | ...) ) + kl_factor * KL(P_now || P_init)
    + v_weight_decay * ||δ_r|| / ||z_init_r||^2,

minimised with Adam (one state row per request; rows are independent, so the batch sums their losses)
with the per-row early stop and norm clamp of the paper.

Speed-ups that keep the math exact:
- Nothing before the subject's last token depends on δ (causal attention), nor does anything below block
  L_z. One no-grad pass computes block L_z's outputs and every block's keys/values; each optimisation step
  then runs only blocks L_z+1.. and only on the tokens from the subject's last token on, attending to the
  cached keys/values of the earlier tokens ("suffix" mode). Blocks 0..L_z are replaced by a replay of the
  cached block-L_z outputs. Models whose sliding attention window is shorter than the prompts use the same
  replay on whole sequences instead ("full" mode).
- The unembedding is applied only at the positions the loss reads (a 49k vocabulary costs as much as a
  third of SmolLM2 per position).
- Requests that have converged leave the batch.
- Sequences run in a few buckets of similar token counts (`padded_groups`), not one padded batch nor one
  group per count: a few large matrix products beat many small ones, and padding costs compute.

With `compute_dtype` set (e.g. bfloat16, about 2x faster matrix products on a CPU with AVX512-BF16, but 10-40x
slower on one without: editors resolve `v_dtype: auto` by a measured probe, editdecay.models.precision), the
steps run on a frozen low-precision copy of the model; the cached pass, z_init, δ, Adam and the log-softmax
stay in float32, so only the loss surface δ descends is approximated.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache

from editdecay.data import EditRequest
from editdecay.editing.subject import essence_tokens, pad_right, prompt_tokens, target_ids
from editdecay.models import arch_for, block, causal_lm, final_norm, num_blocks, pad_id_of, unembedding
from editdecay.models.hooks import hidden_of, record, replay_block_output, run_until
from editdecay.models.kvcache import cache_kwargs
from editdecay.models.padding import padded_groups

log = logging.getLogger(__name__)

_BETAS = (0.9, 0.999)
_EPS = 1e-8
# A bucket costs about as much fixed time (dispatch, small-matrix inefficiency) as this many more tokens.
BUCKET_OVERHEAD_TOKENS = 64
Mode = Literal["auto", "suffix", "full"]


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
    compute_dtype: str | None = None  # dtype of the optimisation steps' passes; None: the model's


@dataclass
class TargetResult:
    """z (n, d) and z_init (n, d) (float32, float64 for float64 models), with per-request diagnostics."""

    z: torch.Tensor
    z_init: torch.Tensor
    steps: list[int]
    final_loss: list[float]
    final_nll: list[float]
    seconds: float
    optimisation_steps: int  # batched steps run, over all chunks
    modes: list[str] = field(default_factory=list)  # "suffix" or "full", per chunk


@dataclass
class _Batch:
    """All sequences of a chunk of requests, right-padded, with what the loss reads from each."""

    input_ids: torch.Tensor  # (S, T)
    lengths: torch.Tensor  # (S,)
    owner: torch.Tensor  # (S,) request index within the chunk
    subject_index: torch.Tensor  # (S,) where δ is added
    is_essence: torch.Tensor  # (S,) bool; the essence prompt's loss reads the subject position
    # Rewriting targets, flattened: sequence, absolute position whose logits predict the token, token id.
    tgt_seq: torch.Tensor
    tgt_pos: torch.Tensor
    tgt_id: torch.Tensor
    n_requests: int
    n_contexts: int
    pad: int


@dataclass
class _Prepared:
    """The no-grad pass: block-L_z outputs (S, T, d), one raw block output (format template), and per-block
    keys/values (S, H, T, hd) in suffix mode."""

    hidden: torch.Tensor
    template: torch.Tensor | tuple
    past: list[tuple[torch.Tensor, torch.Tensor]] | None

    def to(self, dtype: torch.dtype) -> _Prepared:
        past = None if self.past is None else [(k.to(dtype), v.to(dtype)) for k, v in self.past]
        return _Prepared(self.hidden.to(dtype), self.template, past)


ChunkCache = Callable[[Sequence[EditRequest], Callable[[], TargetResult]], TargetResult]


def compute_targets(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    contexts: Sequence[str],
    settings: TargetSettings,
    *,
    batch_size: int = 16,
    mode: Mode = "auto",
    progress: bool = True,
    chunk_cache: ChunkCache | None = None,
) -> TargetResult:
    """Optimise one z per request; `batch_size` requests are optimised together (1: one at a time).

    Chunks are optimised one after another and hold only their own sequences, so memory does not grow with the
    number of requests. `chunk_cache(chunk, compute)` returns a chunk's result, from a store or by calling
    `compute`: with a store, a killed run resumes at the first chunk not yet saved.
    """
    if not 0 <= settings.z_layer < num_blocks(model):
        raise ValueError(f"z layer {settings.z_layer} is outside the model ({num_blocks(model)} blocks).")
    start = time.perf_counter()
    steps_models: list[nn.Module] = []  # made on first use: chunks found in the cache need none

    def optimise(chunk: list[EditRequest]) -> TargetResult:
        tick = time.perf_counter()
        if not steps_models:
            steps_models.append(_steps_model(model, settings.compute_dtype))
        batch = _build_batch(tokenizer, chunk, contexts)
        chunk_mode = _choose_mode(model, batch, mode)
        z, z_init, steps, losses, nlls, n_steps = _optimise(
            model, steps_models[0], batch, settings, [r.case_id for r in chunk], chunk_mode
        )
        return TargetResult(z, z_init, steps, losses, nlls, time.perf_counter() - tick, n_steps, [chunk_mode])

    parts: list[TargetResult] = []
    with tqdm(total=len(requests), desc="target values", unit="req", disable=not progress) as bar:
        for first in range(0, len(requests), batch_size):
            chunk = list(requests[first : first + batch_size])
            compute = partial(optimise, chunk)
            parts.append(chunk_cache(chunk, compute) if chunk_cache is not None else compute())
            bar.update(len(chunk))
    return TargetResult(
        torch.cat([p.z for p in parts]),
        torch.cat([p.z_init for p in parts]),
        [s for p in parts for s in p.steps],
        [loss for p in parts for loss in p.final_loss],
        [nll for p in parts for nll in p.final_nll],
        time.perf_counter() - start,
        sum(p.optimisation_steps for p in parts),
        [m for p in parts for m in p.modes],
    )


def _steps_model(model: nn.Module, dtype_name: str | None) -> nn.Module:
    """The model the optimisation steps run on: `model` itself, or a frozen copy in another dtype. The
    copy uses eager attention: CPU SDPA's backward pass in bfloat16 is several times slower."""
    if dtype_name is None:
        return model
    if dtype_name == "auto":
        raise ValueError(
            "compute dtype 'auto' must be resolved first (MemitHyperParams.with_resolved_dtype, or "
            "editdecay.models.DtypeResolver) before the target optimisation runs."
        )
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"compute dtype {dtype_name!r} is not a floating-point torch dtype.")
    if dtype == next(model.parameters()).dtype:
        return model
    low = copy.deepcopy(model).to(dtype).requires_grad_(False)
    causal_lm(low).set_attn_implementation("eager")
    return low


def _build_batch(tokenizer, requests: list[EditRequest], contexts: Sequence[str]) -> _Batch:
    sequences: list[list[int]] = []
    owner, subject_index, is_essence = [], [], []
    tgt_seq, tgt_pos, tgt_id = [], [], []
    for r_index, request in enumerate(requests):
        target = target_ids(tokenizer, request.target_new)
        for context in contexts:
            prompt = prompt_tokens(tokenizer, context, request)
            for j, token in enumerate(target):
                tgt_seq.append(len(sequences))
                tgt_pos.append(len(prompt.ids) - 1 + j)
                tgt_id.append(token)
            sequences.append(prompt.ids + target[:-1])
            owner.append(r_index)
            subject_index.append(prompt.subject_index)
            is_essence.append(False)
        essence = essence_tokens(tokenizer, request)
        # Only the subject position of the essence prompt is read, so the sequence can end there.
        sequences.append(essence.ids[: essence.subject_index + 1])
        owner.append(r_index)
        subject_index.append(essence.subject_index)
        is_essence.append(True)
    pad = pad_id_of(tokenizer)
    input_ids, mask = pad_right(sequences, pad)
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return _Batch(
        input_ids,
        mask.sum(dim=1),
        as_long(owner),
        as_long(subject_index),
        torch.tensor(is_essence),
        as_long(tgt_seq),
        as_long(tgt_pos),
        as_long(tgt_id),
        len(requests),
        len(contexts),
        pad,
    )


def _choose_mode(model: nn.Module, batch: _Batch, mode: Mode) -> str:
    window = arch_for(model).sliding_window(model.config)
    layer_types = getattr(model.config, "layer_types", None) or []
    sliding = not layer_types or "sliding_attention" in layer_types
    # Past + new tokens never exceed twice the longest sequence.
    too_long = window is not None and sliding and 2 * batch.input_ids.shape[1] >= window
    if mode == "suffix" and too_long:
        raise ValueError(f"Suffix mode needs prompts shorter than half the sliding window ({window}); use 'full'.")
    if mode != "auto":
        return mode
    return "full" if too_long else "suffix"


def _optimise(
    model: nn.Module, steps_model: nn.Module, batch: _Batch, settings: TargetSettings, case_ids: list[str], mode: str
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[float], list[float], int]:
    device = next(model.parameters()).device
    n = batch.n_requests
    prepared = _prepare(model, batch, settings.z_layer, suffix=mode == "suffix")
    bare_rows = torch.nonzero(~batch.is_essence).squeeze(1).view(n, batch.n_contexts)[:, 0]
    z_init = prepared.hidden[bare_rows.to(device), batch.subject_index[bare_rows].to(device)]
    z_init = z_init.to(torch.promote_types(z_init.dtype, torch.float32))  # δ and Adam in float32 or better
    prepared = prepared.to(next(steps_model.parameters()).dtype)
    max_norm = settings.clamp_norm_factor * z_init.norm(dim=1)
    delta = torch.zeros_like(z_init)
    adam_m, adam_v = torch.zeros_like(delta), torch.zeros_like(delta)
    active = torch.ones(n, dtype=torch.bool)
    steps_taken = [settings.steps - 1] * n
    final_loss, final_nll = [float("nan")] * n, [float("nan")] * n
    kl_init: torch.Tensor | None = None
    runs = 0
    for step in range(settings.steps):
        rows = torch.nonzero(active).squeeze(1)
        d = delta[rows.to(device)].clone().requires_grad_(True)
        nll, kl_log_p = _losses(steps_model, batch, prepared, rows, d, settings.z_layer, mode)
        runs += 1
        if kl_init is None:  # step 0: δ = 0 on every row, so this is the unedited distribution
            kl_init = kl_log_p.detach()
        kl = (kl_log_p.exp() * (kl_log_p - kl_init[rows.to(device)])).sum(dim=1)
        decay = settings.weight_decay * d.norm(dim=1) / z_init[rows.to(device)].norm(dim=1) ** 2
        loss = nll + settings.kl_factor * kl + decay
        if not torch.isfinite(loss).all():
            bad = [case_ids[int(rows[i])] for i in torch.nonzero(~torch.isfinite(loss.detach())).squeeze(1)]
            raise TargetOptimisationError(
                f"NaN/inf loss during target optimisation (step {step}) for edit requests {bad}. Use a "
                "float32 model, or lower v_lr / clamp_norm_factor."
            )
        values, nll_values = loss.detach().cpu(), nll.detach().cpu()
        for i, row in enumerate(rows.tolist()):
            final_loss[row], final_nll[row] = float(values[i]), float(nll_values[i])
        done = values < settings.early_stop_loss
        for row in rows[done].tolist():
            steps_taken[row] = step
        if step == settings.steps - 1:
            break
        keep = ~done
        active[rows[done]] = False
        if not keep.any():
            break
        (grad,) = torch.autograd.grad(loss[keep.to(device)].sum(), d)
        moving = rows[keep].to(device)
        _adam_step(delta, adam_m, adam_v, grad[keep.to(device)], moving, step + 1, settings.lr)
        _clamp_rows(delta, moving, max_norm)
    return (z_init + delta).cpu(), z_init.cpu(), steps_taken, final_loss, final_nll, runs


def _adam_step(
    param: torch.Tensor, m: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor, t: int, lr: float
) -> None:
    """torch.optim.Adam (no weight decay) on the given rows; every moving row has taken t steps."""
    m[rows] = _BETAS[0] * m[rows] + (1 - _BETAS[0]) * grad
    v[rows] = _BETAS[1] * v[rows] + (1 - _BETAS[1]) * grad * grad
    denom = v[rows].sqrt() / (1 - _BETAS[1] ** t) ** 0.5 + _EPS
    param[rows] = param[rows] - (lr / (1 - _BETAS[0] ** t)) * m[rows] / denom


def _clamp_rows(delta: torch.Tensor, rows: torch.Tensor, max_norm: torch.Tensor) -> None:
    norms = delta[rows].norm(dim=1)
    limit = max_norm[rows]
    scale = torch.where(norms > limit, limit / norms, torch.ones_like(norms))
    delta[rows] = delta[rows] * scale[:, None]


def _prepare(model: nn.Module, batch: _Batch, z_layer: int, *, suffix: bool) -> _Prepared:
    """One no-grad pass over every sequence (in groups of equal length, so nothing is spent on padding)."""
    device = next(model.parameters()).device
    z_block = block(model, z_layer)
    raw: dict[str, torch.Tensor | tuple] = {}
    handle = z_block.register_forward_hook(lambda _m, _a, output: raw.update(out=output))
    size, length = batch.input_ids.shape
    hidden: torch.Tensor | None = None
    past: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    try:
        with torch.no_grad():
            for value in torch.unique(batch.lengths).tolist():
                group = torch.nonzero(batch.lengths == value).squeeze(1)
                input_ids = batch.input_ids[group, :value].to(device)
                if suffix:
                    cache = DynamicCache(config=causal_lm(model).config)
                    run_until(model, final_norm(model), input_ids=input_ids, **cache_kwargs(cache), use_cache=True)
                    layers = [(k, v) for k, v, *_ in cache]
                    if past is None:
                        past = [
                            (
                                k.new_zeros(size, k.shape[1], length, k.shape[3]),
                                v.new_zeros(size, v.shape[1], length, v.shape[3]),
                            )
                            for k, v in layers
                        ]
                    for (k_all, v_all), (k, v) in zip(past, layers, strict=True):
                        k_all[group.to(k.device), :, :value] = k
                        v_all[group.to(v.device), :, :value] = v
                else:
                    run_until(model, z_block, input_ids=input_ids, use_cache=False)
                out = hidden_of(raw["out"])
                if hidden is None:
                    hidden = out.new_zeros(size, length, out.shape[-1])
                hidden[group.to(device), :value] = out
    finally:
        handle.remove()
    assert hidden is not None
    return _Prepared(hidden, raw["out"], past)


def _losses(
    model: nn.Module,
    batch: _Batch,
    prepared: _Prepared,
    rows: torch.Tensor,
    delta: torch.Tensor,
    z_layer: int,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per active request (rows): mean rewriting NLL and the essence log-distribution (len(rows), V)."""
    device = delta.device
    local = torch.full((batch.n_requests,), -1, dtype=torch.long)
    local[rows] = torch.arange(rows.numel())
    seqs = torch.nonzero(local[batch.owner] >= 0).squeeze(1)
    owner = local[batch.owner[seqs]]
    subject = batch.subject_index[seqs]
    # Positions from `first` on depend on δ. A bucket of width w computes the last w positions of each of
    # its sequences (from `start`): positions before `first` are exact replays of the cached pass, and a
    # sequence shorter than w gets padding after its end, which causal attention keeps from its tokens.
    length = batch.lengths[seqs]
    first = subject if mode == "suffix" else torch.zeros_like(subject)
    start = torch.zeros_like(first)
    count = length - first
    width = int(count.max())
    normed: torch.Tensor | None = None
    for members in padded_groups(count.tolist(), overhead=BUCKET_OVERHEAD_TOKENS):
        group = torch.tensor(members)
        value = int(count[group].max())
        start[group] = (length[group] - value).clamp(min=0)
        out = _run_upper(
            model,
            batch,
            prepared,
            seqs[group],
            start[group],
            value,
            delta[owner[group].to(device)],
            (subject - start)[group],
            z_layer,
        )
        if normed is None:
            normed = out.new_zeros(seqs.numel(), width, out.shape[-1])
        cells = (group[:, None].expand(-1, value).to(device), torch.arange(value, device=device).expand(len(group), -1))
        normed = normed.index_put(cells, out)
    assert normed is not None

    # Rewriting NLL: mean over each sequence's target tokens, then over each request's contexts.
    seq_slot = torch.full((batch.input_ids.shape[0],), -1, dtype=torch.long)
    seq_slot[seqs] = torch.arange(seqs.numel())
    slot = seq_slot[batch.tgt_seq]
    use = slot >= 0
    t_slot, t_pos, t_id = slot[use], batch.tgt_pos[use], batch.tgt_id[use]
    logits = _logits(model, normed[t_slot.to(device), (t_pos - start[t_slot]).to(device)])
    # -log softmax at the target token, without materialising the whole log-softmax (memory).
    token_nll = torch.logsumexp(logits, dim=-1) - logits.gather(1, t_id.to(device)[:, None]).squeeze(1)
    t_slot = t_slot.to(device)
    per_seq = torch.zeros(seqs.numel(), dtype=token_nll.dtype, device=device).index_add(
        0, t_slot, token_nll
    ) / torch.zeros(seqs.numel(), dtype=token_nll.dtype, device=device).index_add(0, t_slot, torch.ones_like(token_nll))
    rewrite = torch.nonzero(~batch.is_essence[seqs]).squeeze(1)
    nll = (
        torch.zeros(rows.numel(), dtype=per_seq.dtype, device=device).index_add(
            0, owner[rewrite].to(device), per_seq[rewrite.to(device)]
        )
        / batch.n_contexts
    )
    # KL distribution: the essence prompt's subject position, one per request, in row order.
    essence = torch.nonzero(batch.is_essence[seqs]).squeeze(1)
    essence = essence[torch.argsort(owner[essence])]
    kl_log_p = F.log_softmax(_logits(model, normed[essence.to(device), (subject - start)[essence].to(device)]), -1)
    return nll, kl_log_p


def _run_upper(
    model: nn.Module,
    batch: _Batch,
    prepared: _Prepared,
    seqs: torch.Tensor,
    start: torch.Tensor,
    count: int,
    delta: torch.Tensor,
    delta_column: torch.Tensor,
    z_layer: int,
) -> torch.Tensor:
    """Final-normed hidden states (len(seqs), count, d) of positions start..start+count-1 of each sequence,
    computing only blocks L_z+1.. (with δ added to block L_z's output) on top of the cached pass."""
    device = delta.device
    absolute = start[:, None] + torch.arange(count)[None]
    input_ids = batch.input_ids[seqs[:, None], absolute]
    hidden = prepared.hidden[seqs[:, None].to(device), absolute.to(device)]
    add = torch.zeros(hidden.shape, dtype=delta.dtype, device=device).index_put(
        (torch.arange(seqs.numel(), device=device), delta_column.to(device)), delta
    )
    hidden = hidden + add.to(hidden.dtype)
    past = prepared.past
    past_len = int(start.max()) if past is not None else 0
    mask = torch.cat(
        [torch.arange(past_len)[None] < start[:, None], torch.ones(len(seqs), count, dtype=torch.bool)], dim=1
    ).long()
    kwargs: dict[str, object] = {"use_cache": False}
    if past is not None and past_len:
        data = [(k[seqs.to(k.device), :, :past_len], v[seqs.to(v.device), :, :past_len]) for k, v in past]
        kwargs = {**cache_kwargs(DynamicCache(ddp_cache_data=data, config=causal_lm(model).config)), "use_cache": True}
    norm_path = arch_for(model).final_norm_path
    with replay_block_output(model, z_layer, prepared.template, hidden), record(model, [norm_path]) as out:
        run_until(
            model,
            final_norm(model),
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=absolute.to(device),
            **kwargs,
        )
    return out[norm_path]


def _logits(model: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """Logits (float32 or better) of final-normed hidden states (final soft-capping included)."""
    logits = unembedding(model)(normed)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    cap = arch_for(model).logit_softcap(model.config)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
