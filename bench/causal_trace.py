"""Causal tracing of MLP outputs (Meng et al., 2022, "Locating and Editing Factual Associations in GPT").

For known facts the model completes correctly, the subject's token embeddings are corrupted with Gaussian
noise (`noise_mult` x the standard deviation of subject-token embeddings), and then the clean output of
the MLP down projection at the LAST subject token is restored, at one layer or at a window of layers
centred on it. The indirect effect of a layer is

    IE(l) = P_restored(l)(o) - P_corrupted(o)

with o the first token of the correct answer, averaged over noise samples and facts. MEMIT-style editors
write into early-middle layers around the peak of this curve (docs/algorithms.md §0).

Usage:
    .venv/bin/python bench/causal_trace.py --model smollm2-135m --facts 30 --threads 1
    .venv/bin/python bench/causal_trace.py --model gemma3-270m --facts 30 --threads 1

Facts come from ../shared/data/known/known_1000.json (ROME's known facts) when present, else from the
built-in control suite (`builtin-control`).
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from editdecay.models import load_model, mlp_out, num_blocks
from editdecay.models.arch import arch_for
from editdecay.models.hooks import edit_output, record

KNOWN_FACTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "known" / "known_1000.json"


@dataclass(frozen=True)
class Fact:
    subject: str
    prompt: str
    answer: str


@dataclass
class TracedFact:
    fact: Fact
    p_clean: float
    p_corrupt: float
    restored_single: torch.Tensor  # (layers,) P(o) after restoring one layer
    restored_window: torch.Tensor  # (layers,) P(o) after restoring a window centred on the layer


def load_facts(path: Path) -> list[Fact]:
    if path.is_file():
        records = json.loads(path.read_text(encoding="utf-8"))
        return [Fact(r["subject"], r["prompt"], r["attribute"]) for r in records if r["subject"] in r["prompt"]]
    from editdecay.data import load_edit_requests

    return [Fact(r.subject, r.prompt, r.target_true or r.target_new) for r in load_edit_requests("builtin-control")]


def encode(tokenizer, fact: Fact) -> tuple[torch.Tensor, list[int], int]:
    """Token ids (1, T), the subject's token positions, and the answer's first token id."""
    enc = tokenizer(fact.prompt, return_offsets_mapping=True, return_tensors="pt")
    start = fact.prompt.index(fact.subject)
    end = start + len(fact.subject)
    offsets = enc.offset_mapping[0].tolist()
    subject_positions = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    answer_ids = tokenizer(" " + fact.answer.strip(), add_special_tokens=False).input_ids
    return enc.input_ids, subject_positions, answer_ids[0]


@torch.no_grad()
def known_facts(model, tokenizer, facts: list[Fact], want: int, scan: int) -> list[Fact]:
    """The first `want` of the first `scan` facts whose greedy next token is the answer's first token."""
    chosen: list[Fact] = []
    for fact in tqdm(facts[:scan], desc="checking facts", leave=False):
        ids, subject_positions, answer_id = encode(tokenizer, fact)
        if not subject_positions:
            continue
        logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
        if int(logits.argmax()) == answer_id:
            chosen.append(fact)
            if len(chosen) == want:
                break
    return chosen


@torch.no_grad()
def embedding_std(model, tokenizer, facts: list[Fact]) -> float:
    """Standard deviation of the (post-scaling) input embeddings of the subject tokens, as in ROME."""
    embed = model.get_input_embeddings()
    pieces = []
    for fact in facts:
        ids, subject_positions, _ = encode(tokenizer, fact)
        pieces.append(embed(ids)[0, subject_positions].flatten())
    return float(torch.cat(pieces).std())


@torch.no_grad()
def trace_fact(model, tokenizer, fact: Fact, noise: torch.Tensor, window: int) -> TracedFact:
    """One batched forward: S noise samples x (1 corrupted + L single-layer + L window restorations)."""
    n_layers = num_blocks(model)
    ids, subject_positions, answer_id = encode(tokenizer, fact)
    last_subject = subject_positions[-1]
    samples = noise.shape[0]
    mlp_names = [arch_for(model).mlp_out_path(layer) for layer in range(n_layers)]

    with record(model, mlp_names, "output") as clean_out:
        clean_logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
    p_clean = float(clean_logits.softmax(-1)[answer_id])
    clean_at_subject = [clean_out[name][0, last_subject].clone() for name in mlp_names]

    # Row groups: 0 = corrupted only; 1..L = restore layer l; L+1..2L = restore the window around layer l.
    groups = 1 + 2 * n_layers
    restore: list[list[int]] = [[] for _ in range(n_layers)]  # layer -> row groups restoring it
    for layer in range(n_layers):
        restore[layer].append(1 + layer)
        # As in ROME, the window is centred on the layer and cut (not shifted) at the first and last block.
        for restored in range(max(0, layer - window // 2), min(n_layers, layer + (window + 1) // 2)):
            restore[restored].append(1 + n_layers + layer)
    batch_ids = ids.repeat(groups * samples, 1)
    batch_noise = noise[:, : len(subject_positions)].repeat(groups, 1, 1)  # same noise in every group

    def corrupt(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        hidden[:, subject_positions] += batch_noise.to(hidden.dtype)
        return hidden

    def restorer(layer: int):
        rows = torch.tensor([g * samples + s for g in restore[layer] for s in range(samples)])

        def edit(hidden: torch.Tensor) -> torch.Tensor:
            hidden = hidden.clone()
            hidden[rows, last_subject] = clean_at_subject[layer].to(hidden.dtype)
            return hidden

        return edit

    with ExitStack() as hooks:
        hooks.enter_context(edit_output(model.get_input_embeddings(), corrupt))
        for layer in range(n_layers):
            hooks.enter_context(edit_output(mlp_out(model, layer), restorer(layer)))
        logits = model(input_ids=batch_ids, logits_to_keep=1).logits[:, -1]
    probs = logits.float().softmax(-1)[:, answer_id].view(groups, samples).mean(1)
    return TracedFact(fact, p_clean, float(probs[0]), probs[1 : 1 + n_layers].clone(), probs[1 + n_layers :].clone())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--facts", type=int, default=30, help="number of correctly completed facts to trace")
    parser.add_argument("--scan", type=int, default=1209, help="look for them among the first SCAN facts")
    parser.add_argument("--samples", type=int, default=3, help="noise samples per fact (shared by all layers)")
    parser.add_argument("--window", type=int, default=5, help="layers restored together in the window trace")
    parser.add_argument("--noise-mult", type=float, default=3.0, help="noise std in units of the embedding std")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=KNOWN_FACTS)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model, tokenizer = load_model(args.model)
    facts = known_facts(model, tokenizer, load_facts(args.data), args.facts, args.scan)
    if not facts:
        raise SystemExit("The model completes none of the scanned facts correctly; raise --scan.")
    noise_std = args.noise_mult * embedding_std(model, tokenizer, facts)
    hidden = model.get_input_embeddings().weight.shape[1]
    max_subject = max(len(encode(tokenizer, f)[1]) for f in facts)
    generator = torch.Generator().manual_seed(args.seed)
    traced = []
    for fact in tqdm(facts, desc=f"tracing {args.model}"):
        noise = torch.randn(args.samples, max_subject, hidden, generator=generator) * noise_std
        traced.append(trace_fact(model, tokenizer, fact, noise, args.window))
    elapsed = time.perf_counter() - start

    p_clean = sum(t.p_clean for t in traced) / len(traced)
    p_corrupt = sum(t.p_corrupt for t in traced) / len(traced)
    single = torch.stack([t.restored_single - t.p_corrupt for t in traced])
    windowed = torch.stack([t.restored_window - t.p_corrupt for t in traced])
    print(
        f"\nmodel {args.model}: {len(traced)} facts, {args.samples} noise samples, noise std {noise_std:.4f} "
        f"({args.noise_mult} x embedding std), window {args.window}, {elapsed:.0f} s"
    )
    print(f"mean P(answer): clean {p_clean:.3f}, subject corrupted {p_corrupt:.3f}\n")
    print("| layer | IE single layer | IE window | std err (window) |")
    print("|---:|---:|---:|---:|")
    sem = windowed.std(0) / len(traced) ** 0.5
    for layer in range(single.shape[1]):
        print(f"| {layer} | {single[:, layer].mean():.4f} | {windowed[:, layer].mean():.4f} | {sem[layer]:.4f} |")
    peak_single = int(single.mean(0).argmax())
    peak_window = int(windowed.mean(0).argmax())
    print(f"\npeak: single layer {peak_single}, window centre {peak_window}")


if __name__ == "__main__":
    main()
