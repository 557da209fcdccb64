"""Build the built-in edit suite (src/editdecay/data/builtin/edits.json, control.json) from candidate facts.

Every candidate in scripts/builtin_candidates.yaml is scored with a real model (SmolLM2-135M by default): the
mean per-token NLL of " " + object after the filled prompt, teacher forced. A fact counts as known when the
true object beats each of N_DISTRACTORS distractors (other objects of the same relation) on the edit prompt; its
target_new is then one of those distractors that the model rejects by a clear margin. Known facts are split
into edit requests and never-edited controls (disjoint subjects), and each edit gets neighbourhood prompts:
other unedited subjects of the same relation, those sharing the true object first (CounterFact convention),
each kept only when the model prefers its answer over the edit's target_new.

Usage: .venv/bin/python scripts/build_builtin_suite.py [--model smollm2-135m] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from editdecay.models import load_model
from editdecay.storage import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = ROOT / "scripts" / "builtin_candidates.yaml"
OUT_DIR = ROOT / "src" / "editdecay" / "data" / "builtin"
N_DISTRACTORS = 4
NEW_MARGIN = 0.5  # nats: target_new must be at least this much less likely than target_true (mean NLL)
MAX_EDITS, MAX_CONTROLS = 16, 10  # per relation
NEIGHBORS, NEIGHBOR_CANDIDATES = 4, 7


@dataclass(frozen=True)
class Relation:
    name: str
    template: str
    paraphrases: tuple[str, ...]
    facts: tuple[tuple[str, str], ...]


@dataclass
class Fact:
    relation: Relation
    subject: str
    true: str
    new: str = ""
    margin: float = 0.0
    paraphrase_margins: list[float] = field(default_factory=list)
    neighbors: list[dict[str, str]] = field(default_factory=list)


def load_candidates(path: Path) -> list[Relation]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    relations = []
    for name, spec in data.items():
        templates = [spec["template"], *spec["paraphrases"]]
        facts = tuple(spec["facts"].items())
        for text in [*templates, *(x for fact in facts for x in fact)]:
            if not isinstance(text, str) or text != text.strip():
                raise ValueError(f"{path}: relation {name}: {text!r} must be a string without outer spaces")
        for template in templates:
            if template.count("{}") != 1:
                raise ValueError(f"{path}: relation {name}: template {template!r} needs exactly one '{{}}'")
        relations.append(Relation(name, spec["template"], tuple(spec["paraphrases"]), facts))
    return relations


def mean_nll(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], desc: str, batch_size: int = 64) -> list[float]:
    """Mean per-token NLL of " " + target after each prompt (teacher forced), batched with right padding."""
    encoded = [
        (tokenizer(prompt).input_ids, tokenizer(" " + target, add_special_tokens=False).input_ids)
        for prompt, target in pairs
    ]
    order = sorted(range(len(encoded)), key=lambda i: sum(map(len, encoded[i])))
    result = [0.0] * len(encoded)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        rows = order[start : start + batch_size]
        seqs = [encoded[i][0] + encoded[i][1] for i in rows]
        width = max(map(len, seqs))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        # The token at position t is predicted by the logits at t - 1; only those rows go through the head.
        batch_idx, pos_idx, tgt_ids, owner = [], [], [], []
        for r, i in enumerate(rows):
            n_prompt, target = len(encoded[i][0]), encoded[i][1]
            batch_idx += [r] * len(target)
            pos_idx += range(n_prompt - 1, n_prompt - 1 + len(target))
            tgt_ids += target
            owner += [r] * len(target)
        with torch.no_grad():
            hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = model.get_output_embeddings()(hidden[batch_idx, pos_idx])
        logp = logits.float().log_softmax(-1)
        token_nll = -logp[torch.arange(len(tgt_ids)), tgt_ids]
        sums = torch.zeros(len(rows)).index_add_(0, torch.tensor(owner), token_nll)
        for r, i in enumerate(rows):
            result[i] = (sums[r] / len(encoded[i][1])).item()
    return result


def first_token(tokenizer: Any, target: str) -> int:
    return tokenizer(" " + target, add_special_tokens=False).input_ids[0]


def mentions(text: str, subject: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", text) is not None


def known_facts(model: Any, tokenizer: Any, relations: list[Relation], rng: random.Random) -> list[Fact]:
    """Facts whose true object beats N_DISTRACTORS same-relation objects, each with a chosen target_new."""
    trials: list[tuple[Fact, list[str]]] = []
    pairs: list[tuple[str, str]] = []
    for relation in relations:
        pool = sorted({obj for _, obj in relation.facts})
        for subject, true in relation.facts:
            heads = {first_token(tokenizer, true)}
            options = [o for o in pool if o != true]
            rng.shuffle(options)
            distractors = []
            for obj in options:  # distinct first tokens, so the comparison is decided by real knowledge
                if first_token(tokenizer, obj) not in heads and len(distractors) < N_DISTRACTORS:
                    heads.add(first_token(tokenizer, obj))
                    distractors.append(obj)
            prompt = relation.template.format(subject)
            trials.append((Fact(relation, subject, true), distractors))
            pairs += [(prompt, true)] + [(prompt, d) for d in distractors]
    nll = mean_nll(model, tokenizer, pairs, "known facts")
    known, k = [], 0
    for fact, distractors in trials:
        true_nll, wrong = nll[k], dict(zip(distractors, nll[k + 1 : k + 1 + len(distractors)], strict=True))
        k += 1 + len(distractors)
        clear = [d for d in distractors if wrong[d] - true_nll >= NEW_MARGIN]
        if clear and min(wrong.values()) > true_nll:
            fact.new = rng.choice(clear)
            fact.margin = wrong[fact.new] - true_nll
            known.append(fact)
    return known


def split_roles(known: list[Fact], relations: list[Relation], rng: random.Random) -> tuple[list[Fact], list[Fact]]:
    """Edits and controls, every subject used at most once.

    Half the subjects (drawn at random) may be edited, so every relation keeps unedited known facts for
    neighbourhood prompts and controls; relations with the fewest known facts choose their edits first. A
    subject that occurs inside another candidate subject or a template is never edited.
    """
    subjects = sorted({s for r in relations for s, _ in r.facts})
    texts = [t for r in relations for t in (r.template, *r.paraphrases)]
    editable = {
        s
        for s in subjects
        if not any(s != other and mentions(other, s) for other in subjects)
        and not any(mentions(t, s) for t in texts)
        and rng.random() < 0.5
    }
    by_relation: dict[str, list[Fact]] = defaultdict(list)
    for fact in known:
        by_relation[fact.relation.name].append(fact)
    used: set[str] = set()
    edits: list[Fact] = []
    for relation in sorted(relations, key=lambda r: len(by_relation[r.name])):
        facts = by_relation[relation.name][:]
        rng.shuffle(facts)
        quota = min(MAX_EDITS, len(facts) // 2)
        chosen = [f for f in facts if f.subject in editable and f.subject not in used][:quota]
        used.update(f.subject for f in chosen)
        edits += chosen
    controls: list[Fact] = []
    for relation in relations:
        facts = [f for f in by_relation[relation.name] if f.subject not in used]
        rng.shuffle(facts)
        chosen = []
        for fact in facts:
            if fact.subject not in used and len(chosen) < MAX_CONTROLS:
                chosen.append(fact)
                used.add(fact.subject)
        controls += chosen
    order = {r.name: i for i, r in enumerate(relations)}
    return sorted(edits, key=lambda f: order[f.relation.name]), controls


def neighbor_candidates(
    edit: Fact, known: list[Fact], edited: set[str], tokenizer: Any, rng: random.Random
) -> list[tuple[str, str]]:
    """(prompt, answer) about unedited subjects of the same relation; same true object first."""
    relation = edit.relation
    new_head = first_token(tokenizer, edit.new)
    pool = [
        f
        for f in known
        if f.relation.name == relation.name
        and f.subject != edit.subject
        and f.true != edit.new
        and first_token(tokenizer, f.true) != new_head
        and f.subject not in edited
    ]
    rng.shuffle(pool)
    pool.sort(key=lambda f: f.true != edit.true)
    templates = (relation.template, *relation.paraphrases)
    offset = rng.randrange(len(templates))
    return [
        (templates[(offset + i) % len(templates)].format(f.subject), f.true)
        for i, f in enumerate(pool[:NEIGHBOR_CANDIDATES])
    ]


def score_details(
    model: Any, tokenizer: Any, edits: list[Fact], controls: list[Fact], known: list[Fact], rng: random.Random
) -> None:
    """Paraphrase margins for every record and model-checked neighbourhood prompts for every edit."""
    pairs: list[tuple[str, str]] = []
    for fact in edits + controls:
        for template in fact.relation.paraphrases:
            prompt = template.format(fact.subject)
            pairs += [(prompt, fact.true), (prompt, fact.new)]
    edited = {f.subject for f in edits}
    candidates = {id(e): neighbor_candidates(e, known, edited, tokenizer, rng) for e in edits}
    for edit in edits:
        for prompt, answer in candidates[id(edit)]:
            pairs += [(prompt, answer), (prompt, edit.new)]
    nll = mean_nll(model, tokenizer, pairs, "paraphrases and neighbours")
    margins = iter([new - right for right, new in zip(nll[::2], nll[1::2], strict=True)])
    for fact in edits + controls:
        fact.paraphrase_margins = [next(margins) for _ in fact.relation.paraphrases]
    for edit in edits:
        for prompt, answer in candidates[id(edit)]:
            if next(margins) > 0 and len(edit.neighbors) < NEIGHBORS:
                edit.neighbors.append({"prompt": prompt, "answer": answer})


def record(fact: Fact, case_id: str, with_neighbors: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "case_id": case_id,
        "relation": fact.relation.name,
        "subject": fact.subject,
        "template": fact.relation.template,
        "target_true": fact.true,
        "target_new": fact.new,
        "paraphrases": list(fact.relation.paraphrases),
    }
    if with_neighbors:
        out["neighborhood"] = fact.neighbors
    return out


def to_json(records: list[dict[str, Any]]) -> str:
    return json.dumps(records, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    relations = load_candidates(CANDIDATES)
    model, tokenizer = load_model(args.model)
    model.eval()

    known = known_facts(model, tokenizer, relations, rng)
    edits, controls = split_roles(known, relations, rng)
    score_details(model, tokenizer, edits, controls, known, rng)
    # A record must be recognised on most of its paraphrases too; an edit needs three checked neighbours.
    keep = [
        f
        for f in edits
        if sum(m > 0 for m in f.paraphrase_margins) * 2 >= len(f.paraphrase_margins) and len(f.neighbors) >= 3
    ]
    kept_controls = [f for f in controls if sum(m > 0 for m in f.paraphrase_margins) >= 1]

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "edits.json", to_json([record(f, f"bi-{i:04d}", True) for i, f in enumerate(keep, 1)]))
    atomic_write_text(
        args.out / "control.json", to_json([record(f, f"bc-{i:04d}", False) for i, f in enumerate(kept_controls, 1)])
    )

    print(
        f"candidates {sum(len(r.facts) for r in relations)}, known {len(known)}, "
        f"edits {len(keep)}/{len(edits)}, controls {len(kept_controls)}/{len(controls)}"
    )
    edit_counts = Counter(f.relation.name for f in keep)
    control_counts = Counter(f.relation.name for f in kept_controls)
    for relation in relations:
        print(
            f"  {relation.name:22s} known {sum(f.relation.name == relation.name for f in known):3d}  "
            f"edits {edit_counts[relation.name]:3d}  controls {control_counts[relation.name]:3d}"
        )
    para = [m > 0 for f in keep + kept_controls for m in f.paraphrase_margins]
    print(f"paraphrase preference for target_true: {sum(para) / len(para):.3f}")
    margins = sorted(f.margin for f in keep + kept_controls)
    print(f"edit-prompt margin nll(new) - nll(true): min {margins[0]:.2f}, median {margins[len(margins) // 2]:.2f}")


if __name__ == "__main__":
    main()
