"""`editdecay findings`: the study's claims C1-C10 tested on any runs directory (docs/findings.md, §15).

Runs are matched into contrasts by their configurations: two runs form a pair for a factor (the editor, the
number of edits, the fine-tuning method, the layer policy, the model) when their configs are equal except for
that factor, the keys that follow it (an editor's hyperparameters, a method's learning rate and rank) and the
replicate seeds, and they share the replicate (`edits.seed`, `finetune.seed`). Within a pair, the unit is an
edit present in both runs (same case_id): d_i = s_i(Med) - s_i(Med_ft), the edit's decay; a contrast's
effect is the mean of d_i(a) - d_i(b) (a difference of ΔES, as a fraction), with a two-level bootstrap interval
(replicates, then edits) and McNemar's exact test on the discordant flips. Claims whose factor did not vary in
the runs are reported as `not run`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from editdecay.reporting.results import ReportError
from editdecay.reporting.statistics import (
    Direction,
    Interval,
    binomial_test,
    bootstrap_difference,
    bootstrap_mean,
    fisher_exact,
    mcnemar_exact,
    verdict,
)

REPLICATE_KEYS = (("edits", "seed"), ("finetune", "seed"))
ORTHOGONAL_MARGIN = 0.2  # C8: mean |cos| below this counts as "nearly orthogonal"
MOST_EDITS = 0.5  # C5: "removes most edits" = EFR above one half


@dataclass(frozen=True)
class Factor:
    """A config key whose values a contrast compares, and the keys whose values follow from it."""

    key: tuple[str, str]
    follows: tuple[tuple[str, str], ...] = ()


FACTORS = {
    "editor": Factor(("editor", "name"), (("editor", "hparams"), ("editor", "preset"))),
    "n_edits": Factor(("edits", "n")),
    "method": Factor(("finetune", "method"), (("finetune", "lr"), ("finetune", "r"), ("finetune", "alpha"))),
    "layers": Factor(("finetune", "layers")),
    "model": Factor(("model", "source"), (("editor", "hparams"), ("editor", "preset"), ("model", "dtype"))),
    "edit_layers": Factor(("editor", "hparams")),
    "corpus": Factor(("finetune", "fact_statements"), (("finetune", "fact_fraction"),)),
}


@dataclass
class Run:
    """One complete run directory: its config and the per-edit tables the claims need."""

    run_id: str
    config: dict[str, Any]
    edits: pd.DataFrame  # edits_per_edit: group, case_id, success, ...
    control: pd.DataFrame | None
    outcomes: pd.DataFrame | None
    activations: pd.DataFrame | None
    downstream: pd.DataFrame | None
    edit_layers: list[int]
    path: Path | None = None  # its run directory, when loaded from one

    def value(self, key: tuple[str, str]) -> Any:
        return self.config.get(key[0], {}).get(key[1])

    @property
    def replicate(self) -> tuple[Any, ...]:
        return tuple(self.value(k) for k in REPLICATE_KEYS)

    def signature(self, factor: Factor | None) -> str:
        config = json.loads(json.dumps(self.config))
        config.pop("name", None)
        dropped = [*REPLICATE_KEYS, *((factor.key, *factor.follows) if factor else ())]
        for section, key in dropped:
            config.get(section, {}).pop(key, None)
        return json.dumps(config, sort_keys=True)

    def decay_units(self, table: str = "edits", indicator: str = "success") -> pd.DataFrame:
        """Per item: before (Med), after (Med_ft) and d = before - after, indexed by case_id."""
        per_edit = self.edits if table == "edits" else self.control
        if per_edit is None:
            raise ReportError(f"run {self.run_id} has no {table} table")
        wide = per_edit.pivot_table(index="case_id", columns="group", values=indicator, aggfunc="first")
        if not {"Med", "Med_ft"} <= set(wide.columns):
            raise ReportError(f"run {self.run_id} lacks the Med or Med_ft group")
        before, after = wide["Med"].astype(bool), wide["Med_ft"].astype(bool)
        return pd.DataFrame({"before": before, "after": after, "d": before.astype(int) - after.astype(int)})

    def flipped(self) -> pd.Series:
        """For each edit successful in Med: whether it fails in Med_ft (their mean is the EFR)."""
        units = self.decay_units()
        return ~units.loc[units["before"], "after"]


@dataclass
class ClaimResult:
    claim: str
    statement: str
    study: str
    measured: str = "not run"
    effect: float | None = None
    interval: Interval | None = None
    test: str = ""
    p_value: float | None = None
    n: str = ""
    verdict: str = "not run"
    parts: list[ClaimResult] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        ci = f"[{self.interval.low:+.3f}, {self.interval.high:+.3f}]" if self.interval else "-"
        return {
            "claim": self.claim,
            "statement": self.statement,
            "measured": self.measured,
            "effect": None if self.effect is None else round(self.effect, 4),
            "95% CI": ci,
            "test": self.test,
            "p": None if self.p_value is None else float(f"{self.p_value:.3g}"),
            "n": self.n,
            "verdict": self.verdict,
            "study": self.study,
        }


def load_runs(runs_dir: str | Path) -> list[Run]:
    runs_dir = Path(runs_dir)
    runs = []
    for done in sorted(runs_dir.glob("*/DONE")):
        directory = done.parent
        if not (directory / "summary.json").is_file():
            continue
        summary = json.loads((directory / "summary.json").read_text())

        def table(name: str, directory: Path = directory) -> pd.DataFrame | None:
            file = directory / f"{name}.parquet"
            return pd.read_parquet(file) if file.is_file() else None

        edits = table("edits_per_edit")
        if edits is None:
            continue
        runs.append(
            Run(
                run_id=str(summary.get("run_id", directory.name)),
                config=summary["config"],
                edits=edits,
                control=table("control_per_edit"),
                outcomes=table("outcomes"),
                activations=table("activations"),
                downstream=table("downstream"),
                edit_layers=list(summary.get("edit_layers") or []),
                path=directory,
            )
        )
    if not runs:
        raise ReportError(f"No complete runs with edit tables under {runs_dir}.")
    return runs


def pairs(runs: Sequence[Run], factor: Factor, a: Any, b: Any) -> list[tuple[Run, Run]]:
    """(run with factor = a, run with factor = b) for every context and replicate holding both."""
    by_context: dict[tuple[str, tuple[Any, ...]], dict[str, Run]] = {}
    for run in runs:
        slot = by_context.setdefault((run.signature(factor), run.replicate), {})
        slot[json.dumps(run.value(factor.key), sort_keys=True)] = run
    key_a, key_b = json.dumps(a, sort_keys=True), json.dumps(b, sort_keys=True)
    return [(slot[key_a], slot[key_b]) for slot in by_context.values() if key_a in slot and key_b in slot]


def factor_values(runs: Sequence[Run], factor: Factor) -> list[Any]:
    seen: dict[str, Any] = {}
    for run in runs:
        seen.setdefault(json.dumps(run.value(factor.key), sort_keys=True), run.value(factor.key))
    return list(seen.values())


def paired_contrast(
    claim: str, statement: str, study: str, matched: Sequence[tuple[Run, Run]], direction: Direction, label: str
) -> ClaimResult:
    """Effect = mean over shared edits of d_i(a) - d_i(b); McNemar on edits flipped under one condition only."""
    result = ClaimResult(claim, statement, study)
    if not matched:
        return result
    clusters: dict[tuple[Any, ...], list[float]] = {}
    only_a = only_b = 0
    es_a, es_b = [], []
    for run_a, run_b in matched:
        units_a, units_b = run_a.decay_units(), run_b.decay_units()
        shared = units_a.index.intersection(units_b.index)
        if shared.empty:
            continue
        ua, ub = units_a.loc[shared], units_b.loc[shared]
        clusters.setdefault(run_a.replicate, []).extend((ua["d"] - ub["d"]).tolist())
        flip_a, flip_b = ua["before"] & ~ua["after"], ub["before"] & ~ub["after"]
        only_a += int((flip_a & ~flip_b).sum())
        only_b += int((flip_b & ~flip_a).sum())
        es_a.append(100 * ua["d"].mean())
        es_b.append(100 * ub["d"].mean())
    if not clusters:
        return result
    interval = bootstrap_mean(list(clusters.values()))
    result.effect, result.interval = interval.estimate, interval
    result.test, result.p_value = (
        f"McNemar exact ({only_a} vs {only_b} flipped in one only)",
        mcnemar_exact(only_a, only_b),
    )
    result.n = f"{sum(map(len, clusters.values()))} edits, {len(clusters)} seeds"
    result.measured = f"{label}: ΔES {np.mean(es_a):.1f} vs {np.mean(es_b):.1f} p.p."
    result.verdict = verdict(interval, direction)
    return result


def _combine(claim: str, statement: str, study: str, parts: list[ClaimResult]) -> ClaimResult:
    """A claim made of parts: replicates if every part does, contradicts if any part does, else inconclusive."""
    ran = [p for p in parts if p.verdict != "not run"]
    result = ClaimResult(claim, statement, study, parts=parts)
    if not ran:
        return result
    verdicts = {p.verdict for p in ran}
    result.verdict = (
        "contradicts"
        if "contradicts" in verdicts
        else "replicates"
        if verdicts == {"replicates"} and len(ran) == len(parts)
        else "inconclusive"
    )
    result.measured = "; ".join(f"{p.claim}: {p.measured}" for p in ran)
    return result


def claim_c1(runs: Sequence[Run]) -> ClaimResult:
    """Pooled over every run of each model (one part per model), McNemar on the flips vs the reverse flips."""
    return _per_model("C1", "fine-tuning lowers edit success (ΔES > 0, EFR > 0)", runs, _decay_over)


def _decay_over(claim: str, runs: Sequence[Run]) -> ClaimResult:
    result = ClaimResult(claim, "fine-tuning lowers edit success (ΔES > 0, EFR > 0)", STUDY["C1"])
    clusters: dict[tuple[Any, ...], list[float]] = {}
    flips = reverse = successes = 0
    for run in runs:
        units = run.decay_units()
        clusters.setdefault(run.replicate, []).extend(units["d"].tolist())
        flips += int((units["before"] & ~units["after"]).sum())
        reverse += int((~units["before"] & units["after"]).sum())
        successes += int(units["before"].sum())
    if not clusters:
        return result
    interval = bootstrap_mean(list(clusters.values()))
    result.effect, result.interval = interval.estimate, interval
    result.test, result.p_value = f"McNemar exact (flips {flips}, reverse {reverse})", mcnemar_exact(flips, reverse)
    result.n = f"{len(runs)} runs, {sum(map(len, clusters.values()))} edit-runs, {len(clusters)} seeds"
    efr = flips / successes if successes else float("nan")
    result.measured = f"ΔES {100 * interval.estimate:.1f} p.p., EFR {100 * efr:.1f}% ({flips}/{successes})"
    result.verdict = verdict(interval, "greater")
    return result


def _factor_claim(
    runs: Sequence[Run], claim: str, statement: str, factor: str, a: Any, b: Any, direction: Direction = "greater"
) -> ClaimResult:
    matched = pairs(runs, FACTORS[factor], a, b)
    return paired_contrast(claim, statement, STUDY[claim], matched, direction, f"{a} vs {b}")


def claim_c3(runs: Sequence[Run]) -> ClaimResult:
    counts = sorted(v for v in factor_values(runs, FACTORS["n_edits"]) if isinstance(v, int))
    statement = "more edits decay more"
    if len(counts) < 2:
        return ClaimResult("C3", statement, STUDY["C3"])
    # The smaller batch's edits are a subset of the larger's when edits are the first n or a seeded sample
    # (the same seed draws the same first records): compare each shared edit's decay in both batches.
    return _factor_claim(runs, "C3", statement, "n_edits", counts[-1], counts[0])


def claim_c4(runs: Sequence[Run]) -> ClaimResult:
    statement = "full fine-tuning decays more than LoRA and DoRA"
    parts = [_factor_claim(runs, "C4", f"full vs {peft}", "method", "full", peft) for peft in ("lora", "dora")]
    for part, peft in zip(parts, ("lora", "dora"), strict=True):
        part.claim = f"C4 full-{peft}"
    return _combine("C4", statement, STUDY["C4"], parts)


def claim_c5(runs: Sequence[Run]) -> ClaimResult:
    statement = "fine-tuning only the edited layers removes most edits, at a cost in downstream accuracy"
    decays_more = _factor_claim(runs, "C5", "edited-only decays more than all", "layers", "edited", "all")
    decays_more.claim = "C5 ΔES"
    removes = ClaimResult("C5 EFR>1/2", f"EFR of edited-only fine-tuning > {MOST_EDITS}", STUDY["C5"])
    edited_runs = [r for r in runs if r.value(("finetune", "layers")) == "edited"]
    if edited_runs:
        clusters: dict[tuple[Any, ...], list[float]] = {}
        for run in edited_runs:
            clusters.setdefault(run.replicate, []).extend(run.flipped().astype(float).tolist())
        flips = sum(int(sum(c)) for c in clusters.values())
        total = sum(len(c) for c in clusters.values())
        if total:
            interval = bootstrap_mean(list(clusters.values()))
            removes.effect, removes.interval = interval.estimate, interval
            removes.test, removes.p_value = "exact binomial vs 1/2", binomial_test(flips, total)
            removes.measured, removes.n = f"EFR {100 * interval.estimate:.1f}%", f"{total} edits"
            removes.verdict = verdict(interval, "greater", margin=MOST_EDITS)
    cost = _downstream_cost(runs)
    return _combine("C5", statement, STUDY["C5"], [decays_more, removes, cost])


def _downstream_cost(runs: Sequence[Run]) -> ClaimResult:
    """Paired over downstream items: accuracy of Med_ft (all layers) - Med_ft (edited layers only)."""
    result = ClaimResult("C5 cost", "downstream accuracy: all-layer minus edited-only fine-tuning > 0", STUDY["C5"])
    clusters: dict[tuple[Any, ...], list[float]] = {}
    acc_all, acc_edited = [], []
    only_all = only_edited = 0
    for run_edited, run_all in pairs(runs, FACTORS["layers"], "edited", "all"):
        if run_edited.downstream is None or run_all.downstream is None:
            continue
        keys = ["task", "item_id"] if "item_id" in run_all.downstream.columns else ["task", "prompt"]

        def correct(run: Run, keys: list[str] = keys) -> pd.Series:
            assert run.downstream is not None
            rows = run.downstream[run.downstream["group"] == "Med_ft"]
            return rows.set_index(keys)["correct"].astype(float)

        a, b = correct(run_all).align(correct(run_edited), join="inner")
        clusters.setdefault(run_all.replicate, []).extend((a - b).tolist())
        only_all += int(((a == 1) & (b == 0)).sum())
        only_edited += int(((a == 0) & (b == 1)).sum())
        acc_all.append(100 * a.mean())
        acc_edited.append(100 * b.mean())
    if not clusters:
        return result
    interval = bootstrap_mean(list(clusters.values()))
    result.effect, result.interval = interval.estimate, interval
    result.measured = f"downstream {np.mean(acc_all):.1f}% (all) vs {np.mean(acc_edited):.1f}% (edited only)"
    result.test = f"McNemar exact ({only_all} vs {only_edited} items right under one only)"
    result.p_value = mcnemar_exact(only_all, only_edited)
    result.n = f"{sum(map(len, clusters.values()))} task items"
    result.verdict = verdict(interval, "greater")
    return result


def _per_model(
    claim: str, statement: str, runs: Sequence[Run], measure: Callable[[str, Sequence[Run]], ClaimResult]
) -> ClaimResult:
    """`measure` on each model's runs (one part per model; the claim itself when there is one model)."""
    models = factor_values(runs, FACTORS["model"])
    parts = [measure(f"{claim} {m}", [r for r in runs if r.value(FACTORS["model"].key) == m]) for m in models]
    if len(parts) == 1:
        parts[0].claim = claim
        return parts[0]
    return _combine(claim, statement, STUDY[claim], parts)


def claim_c7(runs: Sequence[Run]) -> ClaimResult:
    return _per_model("C7", "edited facts are forgotten faster than the model's own facts", runs, _c7_over)


def _c7_over(claim: str, runs: Sequence[Run]) -> ClaimResult:
    """Unpaired: the edits' flip ratio vs the control facts' forget ratio in the same fine-tuned models."""
    result = ClaimResult(claim, "edited facts are forgotten faster than the model's own facts", STUDY["C7"])
    edit_clusters: dict[tuple[Any, ...], list[float]] = {}
    control_clusters: dict[tuple[Any, ...], list[float]] = {}
    for run in runs:
        if run.control is None:
            continue
        edits = run.decay_units()
        control = run.decay_units("control", "knows_true")
        edit_clusters.setdefault(run.replicate, []).extend((~edits.loc[edits["before"], "after"]).astype(float))
        control_clusters.setdefault(run.replicate, []).extend((~control.loc[control["before"], "after"]).astype(float))
    edit_values = [v for c in edit_clusters.values() for v in c]
    control_values = [v for c in control_clusters.values() for v in c]
    if not edit_values or not control_values:
        return result
    interval = bootstrap_difference(list(edit_clusters.values()), list(control_clusters.values()))
    result.effect, result.interval = interval.estimate, interval
    flips, forgotten = int(sum(edit_values)), int(sum(control_values))
    table = [[flips, len(edit_values) - flips], [forgotten, len(control_values) - forgotten]]
    result.test, result.p_value = "Fisher exact (flipped/kept, edits vs control)", fisher_exact(table)
    result.measured = (
        f"edits flipped {100 * flips / len(edit_values):.1f}% ({flips}/{len(edit_values)}), "
        f"control facts forgotten {100 * forgotten / len(control_values):.1f}% ({forgotten}/{len(control_values)})"
    )
    result.n = f"{len(edit_values)} edit-runs, {len(control_values)} control-runs"
    result.verdict = verdict(interval, "greater")
    return result


def claim_c8(runs: Sequence[Run]) -> ClaimResult:
    """Mean |cos(Med - M, Mft - M)| over the layers from the first edited one on, per run, vs the margin."""
    result = ClaimResult(
        "C8",
        f"fine-tuning moves activations nearly orthogonally to the edit's shift (mean |cos| < {ORTHOGONAL_MARGIN})",
        STUDY["C8"],
    )
    clusters: dict[tuple[Any, ...], list[float]] = {}
    for run in runs:
        table = run.activations
        if table is None or not run.edit_layers:
            continue
        rows = table[(table["pair"] == "cos(Med-M, Mft-M)") & (table["layer"] >= min(run.edit_layers))]
        values = rows["similarity"].astype(float).abs().dropna()
        clusters.setdefault(run.replicate, []).extend(values.tolist())
    if not any(clusters.values()):
        return result
    interval = bootstrap_mean(list(clusters.values()))
    result.effect, result.interval = interval.estimate, interval
    result.measured = f"mean |cos(Med-M, Mft-M)| = {interval.estimate:.3f} (edited layers and after)"
    result.n = f"{sum(map(len, clusters.values()))} run-layers"
    result.test = "bootstrap interval vs margin"
    result.verdict = verdict(interval, "less", margin=ORTHOGONAL_MARGIN)
    return result


def claim_c9(runs: Sequence[Run]) -> ClaimResult:
    result = ClaimResult("C9", "erased edits mostly drift to a third answer, not back to the original", STUDY["C9"])
    clusters: dict[tuple[Any, ...], list[float]] = {}
    for run in runs:
        if run.outcomes is None:
            continue
        erased = run.outcomes[(run.outcomes["outcome"] == "erased") & run.outcomes["erased_to"].notna()]
        clusters.setdefault(run.replicate, []).extend((erased["erased_to"] == "third").astype(float).tolist())
    values = [v for c in clusters.values() for v in c]
    if not values:
        result.measured = "no erased edits"
        return result
    interval = bootstrap_mean(list(clusters.values()))
    third = int(sum(values))
    result.effect, result.interval = interval.estimate, interval
    result.test, result.p_value = "exact binomial vs 1/2", binomial_test(third, len(values))
    result.measured = f"{third} of {len(values)} erased edits went to a third answer"
    result.n = f"{len(values)} erased edits"
    result.verdict = verdict(interval, "greater", margin=0.5)
    return result


def claim_c10(runs: Sequence[Run]) -> ClaimResult:
    statement = "the larger model keeps more edits"
    models = factor_values(runs, FACTORS["model"])
    if len(models) < 2:
        return ClaimResult("C10", statement, STUDY["C10"])
    small, large = _by_size(models)
    return _factor_claim(runs, "C10", statement, "model", small, large)


def _by_size(models: list[Any]) -> tuple[Any, Any]:
    """(smaller, larger) of two model sources, by their parameter count when known, else by name."""
    sizes = {"smollm2-135m": 135, "gemma3-270m": 270, "gpt2-xl": 1558, "gpt-j-6b": 6000}
    ordered = sorted(models, key=lambda m: (sizes.get(str(m), 10**6), str(m)))
    return ordered[0], ordered[-1]


def _varied_context(runs: Sequence[Run], factor: Factor) -> list[Run]:
    """The runs of the context (signature without `factor`) in which `factor` takes the most values."""
    contexts: dict[str, list[Run]] = {}
    for run in runs:
        contexts.setdefault(run.signature(factor), []).append(run)
    if not contexts:
        return []

    def spread(members: list[Run]) -> int:
        return len({json.dumps(r.value(factor.key), sort_keys=True) for r in members})

    return max(contexts.values(), key=spread)


def check_localisation(runs: Sequence[Run]) -> pd.DataFrame:
    """EFR and ΔES per number of edited layers: the runs that differ only in the editor's layers (and seeds)."""
    rows = []
    for run in _varied_context(runs, FACTORS["edit_layers"]):
        flipped = run.flipped()
        rows.append(
            {
                "edit_layers": len(run.edit_layers),
                "layers": ",".join(map(str, run.edit_layers)),
                "ft_layers": run.value(("finetune", "layers")),
                "efr": float(flipped.mean()) if len(flipped) else np.nan,
                "flips": int(flipped.sum()),
                "delta_es_pp": 100 * float(run.decay_units()["d"].mean()),
                "margin_drop_pp": _margin_drop(run),
            }
        )
    table = pd.DataFrame(rows)
    return table.groupby(["edit_layers", "layers", "ft_layers"], as_index=False).agg(
        runs=("efr", "size"),
        efr=("efr", "mean"),
        flips=("flips", "sum"),
        delta_es_pp=("delta_es_pp", "mean"),
        margin_drop_pp=("margin_drop_pp", "mean"),
    )


def _margin_drop(run: Run) -> float:
    """Mean rewrite margin P(new) - P(true) of Med minus that of Med_ft, in points (NaN without margins)."""
    if "es_magnitude" not in run.edits.columns:
        return float("nan")
    means = run.edits.groupby("group")["es_magnitude"].mean()
    return 100 * float(means.get("Med", np.nan) - means.get("Med_ft", np.nan))


CLAIMS: dict[str, Callable[[Sequence[Run]], ClaimResult]] = {
    "C1": claim_c1,
    "C2": lambda runs: _factor_claim(
        runs, "C2", "AlphaEdit edits decay more than MEMIT edits", "editor", "alphaedit", "memit"
    ),
    "C3": claim_c3,
    "C4": claim_c4,
    "C5": claim_c5,
    "C6": lambda runs: _factor_claim(
        runs,
        "C6",
        "fine-tuning only the non-edited layers decays more than fine-tuning all layers",
        "layers",
        "non_edited",
        "all",
    ),
    "C7": claim_c7,
    "C8": claim_c8,
    "C9": claim_c9,
    "C10": claim_c10,
}

# The study's own figures (arXiv 2511.05852 v4, the KDD '26 text; docs/study_figures.md says where each is from).
STUDY = {
    "C1": "EFR 25.27% (GPT-J, zsRE, AlphaEdit, 10^4 edits, LoRA; Table 5); ES 93.23 -> 50.45 (Llama2, zsRE, "
    "AlphaEdit, 10^3, LoRA; Table 2)",
    "C2": "ΔES 35.37 (AlphaEdit) vs 9.73 (MEMIT) p.p. (Llama2, zsRE, 100 edits, LoRA; Fig. 2 / Table 2)",
    "C3": "GPT-J zsRE LoRA EFR 5.00 / 5.51 / 15.60% (MEMIT) at 10^2 / 10^3 / 10^4 edits (Table 5); "
    "Llama2 MEMIT goes the other way (Table 4)",
    "C4": "relative ES decrease 38.10% (full) vs 28.71% (LoRA) and 29.88% (DoRA), zsRE averages (Table 4); "
    "not on GPT-J or GPT2-XL",
    "C5": "ES 96 -> 66 (100 edits) and 100 -> 57.80 (1000) with edited-only FT, downstream 65.4 vs ~81 "
    "(all layers) (Llama2, AlphaEdit, CounterFact; Table 7)",
    "C6": "ES 72 (non-edited) vs 98 (all) at 100 edits; 60.30 vs 90.55 at 1000 (Llama2, AlphaEdit, "
    "CounterFact; Table 7)",
    "C7": "not measured by the study (reviewers' request; claimed by Wen & Zhang, arXiv 2507.14198)",
    "C8": "ed-ft similarity lowest of the three pairs, described as nearly orthogonal; no values given "
    "(Fig. 3, Sec. 5.2)",
    "C9": "qualitative (Sec. 4.2, Table 6 examples: one of three erased edits returned to the original)",
    "C10": "mean decay GPT-J 15.93% vs GPT2-XL 40.84% vs Llama2 39.92% (Table 4): attributed to MLP width, not size",
}


def evaluate_claims(runs: Sequence[Run]) -> list[ClaimResult]:
    return [make(runs) for make in CLAIMS.values()]


def check_reinforcement(runs: Sequence[Run]) -> pd.DataFrame:
    """Per kind of fine-tuning data (corpus only, + new-fact or + true-fact statements), in the runs that differ
    only in it: ES of Med_ft, EFR, the share of edits whose Med_ft answer went back to the original, margin drop."""
    rows = []
    for run in _varied_context(runs, FACTORS["corpus"]):
        units, flipped = run.decay_units(), run.flipped()
        reverted = None
        if run.outcomes is not None and "erased_to" in run.outcomes.columns:
            reverted = float((run.outcomes["erased_to"] == "original").mean())
        rows.append(
            {
                "fact_statements": run.value(("finetune", "fact_statements")) or "none (corpus only)",
                "ft_layers": run.value(("finetune", "layers")),
                "es_med_ft": 100 * float(units["after"].mean()),
                "efr": float(flipped.mean()) if len(flipped) else np.nan,
                "back_to_original": reverted,
                "margin_drop_pp": _margin_drop(run),
            }
        )
    table = pd.DataFrame(rows)
    return table.groupby(["fact_statements", "ft_layers"], as_index=False).agg(
        runs=("efr", "size"),
        es_med_ft=("es_med_ft", "mean"),
        efr=("efr", "mean"),
        back_to_original=("back_to_original", "mean"),
        margin_drop_pp=("margin_drop_pp", "mean"),
    )


def plain_runs(runs: Sequence[Run]) -> list[Run]:
    """Runs fine-tuned plainly on their corpus alone (no fact statements mixed in, no edit-preserving strategy)
    with the default edit layers."""
    return [
        r
        for r in runs
        if r.value(("finetune", "fact_statements")) is None
        and r.value(("finetune", "strategy")) in (None, "none")
        and not _custom_layers(r)
    ]


def _custom_layers(run: Run) -> bool:
    return "layers" in (run.value(("editor", "hparams")) or {})


def findings_tables(runs: Sequence[Run]) -> dict[str, pd.DataFrame]:
    """The claims table and the open checks' tables (from the runs that vary what each check needs)."""
    plain = plain_runs(runs)
    tables = {"claims": pd.DataFrame([c.row() for c in _flat_results(evaluate_claims(plain))])}
    localised = [r for r in runs if r.value(("finetune", "fact_statements")) is None]
    if len({len(r.edit_layers) for r in localised}) > 1:
        tables["localisation"] = check_localisation(localised)
    if any(r.value(("finetune", "fact_statements")) for r in runs):
        tables["reinforcement"] = check_reinforcement(runs)
    return tables


def _geometry_tables(runs: Sequence[Run], store: Path) -> dict[str, pd.DataFrame]:
    from editdecay.experiments.geometry import run_geometry
    from editdecay.experiments.store import ArtifactStore

    chosen = [r for r in plain_runs(runs) if r.value(("finetune", "layers")) == "all" and r.path is not None]
    frames = [run_geometry(r.path, ArtifactStore(store)) for r in chosen if r.path is not None]
    if not frames:
        return {}
    layers = pd.concat(frames, ignore_index=True)
    return {"null_space_layers": layers, "null_space": geometry_summary(layers)}


def _flat_results(results: Sequence[ClaimResult]) -> list[ClaimResult]:
    return [item for result in results for item in (result, *result.parts)]


def geometry_summary(layers: pd.DataFrame) -> pd.DataFrame:
    """The null-space check per editor and fine-tuning method: means over runs and edited layers."""
    columns = ["ft_null_share", "edit_null_share", "key_ratio", "cosine", "ft_norm", "edit_norm"]
    return layers.groupby(["model", "editor", "ft_method", "ft_layers"], as_index=False)[columns].mean()


def write_findings(runs_dir: str | Path, out_dir: str | Path, store: str | Path | None = None) -> list[Path]:
    """findings.md (claims with verdicts, the checks) plus one CSV per table; returns the files written. With the
    runs' artifact `store`, the null-space check (experiments/geometry.py) of the all-layer runs is added."""
    from editdecay.storage import atomic_write_text

    runs = load_runs(runs_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = findings_tables(runs)
    if store is not None:
        tables.update(_geometry_tables(runs, Path(store)))
    written = []
    sections = [
        "# Findings: the study's claims on these runs\n",
        f"Runs: `{runs_dir}` ({len(runs)} complete). Effects are differences of per-edit decay "
        "d = s(Med) - s(Med_ft) (fractions; ×100 = p.p. of ES) unless the claim says otherwise; 95% CI from a "
        "two-level bootstrap (seeds, then edits; 2,000 resamples); verdicts per docs/algorithms.md §15.\n",
    ]
    for name, table in tables.items():
        atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
        written.append(out / f"{name}.csv")
        sections.append(f"## {name}\n\n{table.round(4).to_markdown(index=False, missingval='-')}\n")
    atomic_write_text(out / "findings.md", "\n".join(sections))
    return [*written, out / "findings.md"]
