"""Write every table (markdown, LaTeX, CSV) and figure (PNG, PDF); print compact summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from editdecay.reporting.figures import plot_activation_shift, plot_decay
from editdecay.reporting.results import connect
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
        for suffix, text in ((".md", table.to_markdown(index=False)), (".tex", table.to_latex(index=False)),
                             (".csv", table.to_csv(index=False))):
            atomic_write_text(out / f"{name}{suffix}", text)
            written.append(out / f"{name}{suffix}")
        sections.append(f"## {name}\n\n{(make.__doc__ or '').strip()}\n\n{table.to_markdown(index=False)}\n")
    written += plot_decay(con, out)
    written += plot_activation_shift(con, out)
    sections += [f"![{p.stem}]({p.name})\n" for p in written if p.suffix == ".png"]
    atomic_write_text(out / "README.md", "\n".join(sections))
    return [*written, out / "README.md"]


def demo_table(runs_dir: str | Path) -> str:
    """One line per run and set: ES/PS/NS of every model group and the decay between Med and Med_ft.

    For the control set (unedited known facts) the ES column is the share of facts whose true answer is
    still preferred (`knows_true`), so edit decay can be read beside general forgetting.
    """
    con = connect(runs_dir)
    table = con.execute("""
        SELECT r.editor, r.ft_method || '/' || r.ft_layers AS finetune, m."set", m."group",
               -- control facts are never edited: their headline is whether the true answer is still preferred
               round(CASE WHEN m."set" = 'control' THEN m.knows_true ELSE m.es END, 1) AS ES,
               round(CASE WHEN m."set" = 'control' THEN NULL ELSE m.ps END, 1) AS PS,
               round(CASE WHEN m."set" = 'control' THEN NULL ELSE m.ns END, 1) AS NS
        FROM metrics m JOIN run r USING (run_id) ORDER BY ALL""").df()
    wide = table.pivot_table(index=["editor", "finetune", "set"], columns="group", values=["ES", "PS", "NS"])
    wide.columns = [f"{metric}({group})" for metric, group in wide.columns]
    order = [f"{m}({g})" for m in ("ES", "PS", "NS") for g in ("M", "Med", "Mft", "Med_ft")]
    wide = wide[[c for c in order if c in wide.columns]].reset_index()
    decay = con.execute("""
        SELECT r.editor, r.ft_method || '/' || r.ft_layers AS finetune, 'edits' AS "set",
               round(d.delta_es_pp, 1) AS "ΔES", round(100 * d.efr, 1) AS "EFR%"
        FROM decay d JOIN run r USING (run_id)""").df()
    return wide.merge(decay, how="left", on=["editor", "finetune", "set"]).to_markdown(index=False)


def format_run_summary(run_dir: str | Path) -> str:
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    rows = []
    for set_name in ("edits", "control"):
        for group, metrics in summary.get(set_name, {}).get("groups", {}).items():
            rows.append({"set": set_name, "group": group, **{k: metrics.get(k) for k in ("es", "ps", "ns")}})
    lines = [pd.DataFrame(rows).round(1).to_markdown(index=False)] if rows else []
    decay = summary.get("edits", {}).get("decay", {})
    if decay:
        lines.append(f"ΔES {decay.get('delta_es_pp')} p.p., EFR {decay.get('efr')}")
    lines.append(f"stages executed: {summary.get('executed_stages')}; wall {summary.get('wall_seconds')} s")
    return "\n".join(lines)
