"""Write every table (markdown, LaTeX, CSV) and figure (PNG, PDF); print compact summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from editdecay.reporting.durability import plot_strategies, strategy_markdown, strategy_of, strategy_table
from editdecay.reporting.figures import plot_activation_shift, plot_decay, plot_decay_curves
from editdecay.reporting.findings import load_runs
from editdecay.reporting.results import ReportError, columns_of, connect, finetune_label
from editdecay.reporting.tables import TABLES
from editdecay.storage import atomic_write_text


def write_report(runs_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """All tables and figures for the complete runs under `runs_dir`; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    con = connect(runs_dir)
    written: list[Path] = []
    sections = ["# editdecay report\n", f"Runs: `{runs_dir}`\n"]
    for name, make in TABLES.items():
        table = make(con)
        if table.empty:
            continue
        table = table.round(2)
        for suffix, text in (
            (".md", table.to_markdown(index=False)),
            (".tex", table.to_latex(index=False)),
            (".csv", table.to_csv(index=False)),
        ):
            atomic_write_text(out / f"{name}{suffix}", text)
            written.append(out / f"{name}{suffix}")
        sections.append(f"## {name}\n\n{(make.__doc__ or '').strip()}\n\n{table.to_markdown(index=False)}\n")
    written += plot_decay(con, out)
    written += plot_activation_shift(con, out)
    written += plot_decay_curves(con, out)
    try:
        runs = load_runs(runs_dir)
    except ReportError:  # runs without per-edit tables (older formats): no strategy table
        runs = []
    if any(strategy_of(run) != "none" for run in runs):
        table = strategy_table(runs)
        shown = strategy_markdown(table)
        for suffix, text in ((".md", shown), (".csv", table.to_csv(index=False))):
            atomic_write_text(out / f"strategies{suffix}", text)
            written.append(out / f"strategies{suffix}")
        sections.append(f"## strategies\n\n{(strategy_table.__doc__ or '').strip()}\n\n{shown}\n")
        written += plot_strategies(table, out / "fig5_strategies")
    sections += [f"![{p.stem}]({p.name})\n" for p in written if p.suffix == ".png"]
    atomic_write_text(out / "README.md", "\n".join(sections))
    return [*written, out / "README.md"]


GROUP_ORDER = ("M", "Med", "Mft", "Med_ft")


def demo_table(runs_dir: str | Path) -> str:
    """Two compact tables, one row per (editor, fine-tuning):

    - edit decay: ES/PS/NS (%) of every model group, the efficacy margin (mean P(new) - P(true), in points;
      it shows decay before any edit flips), the ES change from Med to Med_ft (p.p.) and the Edit Flip Ratio,
      then the generation-based ES and EFR (genES, genEFR%: the target said in greedy text, §12);
    - side effects: the share of unedited control facts each group still knows, and downstream accuracy.
    """
    con = connect(runs_dir)
    label = finetune_label(con)
    generation = "generation.efr" in columns_of(con, "decay")
    gen_metric = ", m.gen_es" if generation else ""
    metrics = con.execute(f"""
        SELECT r.editor, {label} AS finetune, m."set", m."group",
               m.es, m.ps, m.ns, m.es_magnitude, m.knows_true, m.downstream_avg{gen_metric}
        FROM metrics m JOIN run r USING (run_id)""").df()
    keys = ["editor", "finetune"]
    # M and Mft never saw the edits: their PS/NS/margin add width, not information, to this summary.
    edited = ("Med", "Med_ft")
    edits = _by_group(
        metrics[metrics["set"] == "edits"],
        keys,
        {
            "ES": ("es", GROUP_ORDER),
            "PS": ("ps", edited),
            "NS": ("ns", edited),
            "margin": ("es_magnitude", edited),
            **({"genES": ("gen_es", edited)} if generation else {}),
        },
    )
    gen_decay = """, 100 * d."generation.efr" AS "genEFR%" """ if generation else ""
    decay = con.execute(f"""
        SELECT r.editor, {label} AS finetune,
               d.delta_es_pp AS "ΔES", 100 * d.efr AS "EFR%", d.flips || '/' || d.successes_after_edit AS flips
               {gen_decay}
        FROM decay d JOIN run r USING (run_id)""").df()
    edits = edits.merge(decay, how="left", on=keys)
    control = _by_group(metrics[metrics["set"] == "control"], keys, {"known": ("knows_true", GROUP_ORDER)})
    downstream = _by_group(metrics[metrics["set"] == "edits"], keys, {"downstream": ("downstream_avg", GROUP_ORDER)})
    side = control.merge(downstream, how="outer", on=keys) if not control.empty else downstream
    parts = [
        "Edit decay (edit set, %; margin = mean P(new) - P(true) in points):",
        edits.round(1).to_markdown(index=False, missingval="-"),
    ]
    if len(side.columns) > len(keys):
        parts += [
            "",
            "Side effects (known = unedited control facts still preferred, %; downstream = task accuracy, %):",
            side.round(1).to_markdown(index=False, missingval="-"),
        ]
    return "\n".join(parts)


def _by_group(frame: pd.DataFrame, keys: list[str], columns: dict[str, tuple[str, tuple[str, ...]]]) -> pd.DataFrame:
    """Wide table: a `label(group)` column per metric (label -> (column, groups)) and model group."""
    if frame.empty:
        return pd.DataFrame(columns=keys)
    wide = frame.pivot_table(index=keys, columns="group", values=[c for c, _ in columns.values()])
    out = wide.index.to_frame(index=False)
    for label, (column, groups) in columns.items():
        for group in groups:
            if (column, group) in wide.columns and wide[(column, group)].notna().any():
                out[f"{label}({group})"] = wide[(column, group)].to_numpy()
    return out


def format_run_summary(run_dir: str | Path) -> str:
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    rows = []
    for set_name in ("edits", "control"):
        for group, metrics in summary.get(set_name, {}).get("groups", {}).items():
            rows.append(
                {"set": set_name, "group": group, **{k: metrics.get(k) for k in ("es", "ps", "ns", "gen_es", "gen_ps")}}
            )
    lines = [pd.DataFrame(rows).round(1).to_markdown(index=False)] if rows else []
    decay = summary.get("edits", {}).get("decay", {})
    if decay:
        lines.append(f"ΔES {decay.get('delta_es_pp')} p.p., EFR {decay.get('efr')}")
        generation = decay.get("generation")
        if generation:
            lines.append(f"generation family: ΔES {generation.get('delta_es_pp')} p.p., EFR {generation.get('efr')}")
    lines.append(f"stages executed: {summary.get('executed_stages')}; wall {summary.get('wall_seconds')} s")
    return "\n".join(lines)
