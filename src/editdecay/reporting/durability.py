"""The strategy table: for each edit-preserving strategy, the final model's edit metrics, flips, control facts,
downstream accuracy and extra time, against plain fine-tuning of the same edits (docs/durability.md).

Runs are matched by their config with the strategy (and its replay fraction) removed: a strategy's run is compared
with the plain run (`strategy: none`) of the same model, edits, editor and fine-tuning. Intervals are 95% bootstrap
intervals over edits (two-level over replicates when there are several, reporting/statistics.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from editdecay.reporting.findings import Run
from editdecay.reporting.results import ReportError
from editdecay.reporting.statistics import bootstrap_difference, bootstrap_mean

_STRATEGY_KEYS = (("finetune", "strategy"), ("finetune", "replay_fraction"))
_REPLICATE = (("edits", "seed"), ("finetune", "seed"))


def strategy_of(run: Run) -> str:
    """The strategy's label: its name, with the replay share for `replay` (e.g. `replay 0.25`)."""
    name = run.value(("finetune", "strategy")) or "none"
    return f"replay {run.value(('finetune', 'replay_fraction'))}" if name == "replay" else name


def _signature(run: Run) -> str:
    config = json.loads(json.dumps(run.config))
    config.pop("name", None)
    for section, key in (*_STRATEGY_KEYS, *_REPLICATE):
        config.get(section, {}).pop(key, None)
    return json.dumps(config, sort_keys=True)


def _replicate(run: Run) -> tuple[Any, ...]:
    return tuple(run.value(k) for k in _REPLICATE)


def _final(run: Run, column: str) -> pd.Series:
    table = run.edits[run.edits["group"] == "Med_ft"].set_index("case_id")
    return table[column].astype(float)


def _control_known(run: Run) -> float | None:
    if run.control is None:
        return None
    final = run.control[run.control["group"] == "Med_ft"]
    return float(100 * final["knows_true"].astype(float).mean())


def _downstream(run: Run) -> float | None:
    if run.path is None or not (run.path / "downstream_accuracy.parquet").is_file():
        return None
    table = pd.read_parquet(run.path / "downstream_accuracy.parquet")
    row = table[(table["group"] == "Med_ft") & (table["task"] == "average")]
    return float(row["accuracy"].iloc[0]) if len(row) else None


def _seconds(run: Run) -> dict[str, float]:
    if run.path is None:
        return {}
    return dict(json.loads((run.path / "summary.json").read_text()).get("stage_seconds", {}))


def _learning_rate(run: Run) -> float:
    """The fine-tuning rate as resolved (a config's `lr: null` is the method's default)."""
    if run.path is not None:
        summary = json.loads((run.path / "summary.json").read_text())
        resolved = summary.get("resolved", {}).get("finetune_spec", {}).get("lr")
        if resolved is not None:
            return float(resolved)
    value = run.value(("finetune", "lr"))
    return float("nan") if value is None else float(value)


def _final_model_seconds(run: Run) -> float | None:
    """Time to make Med_ft: Med's fine-tuning, or for `reedit` the edit of Mft (when this run computed it)."""
    seconds = _seconds(run)
    return seconds.get("reedit Mft", seconds.get("finetune Med"))


def _fmt_interval(values: Sequence[float]) -> str:
    return f"[{values[0]:.1f}, {values[1]:.1f}]"


def strategy_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per (configuration without strategy, strategy): Med_ft's ES/PS/NS, EFR with its interval, ΔES
    against plain fine-tuning with its paired interval, control facts known, downstream average, and the time to
    make the final model (and, for reedit, the first edit's time beside it)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_signature(run), []).append(run)
    rows = []
    for runs_of_config in groups.values():
        by_strategy: dict[str, list[Run]] = {}
        for run in runs_of_config:
            by_strategy.setdefault(strategy_of(run), []).append(run)
        plain = {(_replicate(r)): r for r in by_strategy.get("none", [])}
        for name, strategy_runs in sorted(by_strategy.items(), key=lambda item: _order(item[0])):
            strategy_runs.sort(key=_replicate)
            first = strategy_runs[0]
            flips = [r.flipped().astype(float).to_numpy() for r in strategy_runs]
            efr = bootstrap_mean(flips)
            row: dict[str, Any] = {
                "model": first.value(("model", "source")),
                "editor": first.value(("editor", "name")),
                "n_edits": first.value(("edits", "n")),
                "ft_method": first.value(("finetune", "method")),
                "ft_lr": _learning_rate(first),
                "strategy": name,
                "replicates": len(strategy_runs),
                "es": float(np.mean([100 * _final(r, "es").mean() for r in strategy_runs])),
                "ps": float(np.mean([100 * _final(r, "ps").mean() for r in strategy_runs])),
                "ns": float(np.mean([100 * _final(r, "ns").mean() for r in strategy_runs])),
                "efr": 100 * efr.estimate,
                "efr_ci": _fmt_interval((100 * efr.low, 100 * efr.high)),
                "control_known": _mean_or_none([_control_known(r) for r in strategy_runs]),
                "downstream": _mean_or_none([_downstream(r) for r in strategy_runs]),
                "final_model_s": _mean_or_none([_final_model_seconds(r) for r in strategy_runs]),
                "edit_s": _mean_or_none([_seconds(r).get("edit") for r in strategy_runs]),
            }
            matched = [(r, plain[_replicate(r)]) for r in strategy_runs if _replicate(r) in plain]
            if matched and name != "none":
                a = [_final(r, "success").to_numpy() for r, _ in matched]
                b = [_final(p, "success").reindex(_final(r, "success").index).to_numpy() for r, p in matched]
                delta = bootstrap_difference(a, b)
                row["delta_es_vs_plain"] = 100 * delta.estimate
                row["delta_es_ci"] = _fmt_interval((100 * delta.low, 100 * delta.high))
                plain_s = _mean_or_none([_final_model_seconds(p) for _, p in matched])
                if row["final_model_s"] is not None and plain_s is not None:
                    row["extra_s"] = row["final_model_s"] - plain_s
            rows.append(row)
    if not rows:
        raise ReportError("No runs to build the strategy table from.")
    return pd.DataFrame(rows)


def _order(label: str) -> tuple[bool, str]:
    """Plain fine-tuning first, then the strategies by name (replay shares in order)."""
    return (label != "none", label)


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def plot_strategies(table: pd.DataFrame, out: str | Path) -> list[Path]:
    """EFR (with its interval) and control facts known per strategy, one panel per (editor, fine-tuning method and
    learning rate); PNG + PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(  # the decay regime first: the highest rate, then editors and methods by name
        set(zip(table["editor"], table["ft_method"], table["ft_lr"], strict=True)), key=lambda p: (-p[2], p[0], p[1])
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (editor, method, lr) in zip(axes[0], panels, strict=True):
        part = table[(table["editor"] == editor) & (table["ft_method"] == method) & (table["ft_lr"] == lr)]
        x = np.arange(len(part))
        low = [float(ci.strip("[]").split(",")[0]) for ci in part["efr_ci"]]
        high = [float(ci.strip("[]").split(",")[1]) for ci in part["efr_ci"]]
        errors = [part["efr"].to_numpy() - low, np.array(high) - part["efr"].to_numpy()]
        ax.bar(x - 0.2, part["efr"], 0.4, yerr=errors, capsize=3, label="EFR %")
        if part["control_known"].notna().any():
            ax.bar(x + 0.2, part["control_known"].fillna(0), 0.4, label="control known %")
        ax.set_xticks(x, part["strategy"], rotation=20)
        ax.set_title(f"{editor}, {part['n_edits'].iloc[0]} edits: {method} lr {lr:g}", fontsize=9)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def strategy_markdown(table: pd.DataFrame) -> str:
    """The strategy table as Markdown: one decimal for percentages and seconds, learning rates as written."""
    shown = table.assign(ft_lr=table["ft_lr"].map("{:g}".format))
    text_columns = [i for i, c in enumerate(shown.columns) if c == "ft_lr"]  # tabulate would parse it as a float
    return shown.to_markdown(index=False, floatfmt=".1f", disable_numparse=text_columns)
