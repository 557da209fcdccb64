"""The study's figures from stored results: ES before/after fine-tuning (Fig. 2), activation shift (Fig. 3), and
ours: decay curves (edits and control facts retained during fine-tuning)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from editdecay.reporting.results import finetune_label, has_view


def _save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def plot_decay(con: duckdb.DuckDBPyConnection, out_dir: Path) -> list[Path]:
    """Bars of ES for Med (after editing) and Med_ft (after fine-tuning), per fine-tuning method and editor."""
    data = con.execute(f"""
        SELECT r.editor, {finetune_label(con, sep=" / ")} AS ft, m."group", avg(m.es) AS es
        FROM metrics m JOIN run r USING (run_id)
        WHERE m."set" = 'edits' AND m."group" IN ('Med', 'Med_ft') GROUP BY ALL ORDER BY ALL""").df()
    if data.empty:
        return []
    editors = sorted(data["editor"].unique())
    fig, axes = plt.subplots(1, len(editors), figsize=(4.5 * len(editors), 3.6), squeeze=False, sharey=True)
    for ax, editor in zip(axes[0], editors, strict=True):
        subset = data[data["editor"] == editor]
        fts = sorted(subset["ft"].unique())
        x = np.arange(len(fts))
        for offset, group, label in ((-0.2, "Med", "after edit"), (0.2, "Med_ft", "after fine-tuning")):
            values = [subset[(subset["ft"] == ft) & (subset["group"] == group)]["es"].mean() for ft in fts]
            bars = ax.bar(x + offset, values, width=0.4, label=label)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(x, fts, rotation=20, ha="right")
        ax.set_title(editor)
        ax.set_ylim(0, 105)
    axes[0][0].set_ylabel("Efficacy success (%)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Edit efficacy before and after fine-tuning")
    return _save(fig, out_dir, "fig2_es_before_after")


def plot_activation_shift(con: duckdb.DuckDBPyConnection, out_dir: Path) -> list[Path]:
    """Per-layer drift and directional similarity, edited layers shaded, one figure per editor."""
    if not has_view(con, "activations"):
        return []
    data = con.execute("""
        SELECT r.editor, a.layer, a.pair, avg(a.drift) AS drift, avg(a.similarity) AS similarity,
               bool_or(a.edited_layer) AS edited
        FROM activations a JOIN run r USING (run_id) GROUP BY ALL ORDER BY ALL""").df()
    written: list[Path] = []
    for editor in sorted(data["editor"].unique()):
        subset = data[data["editor"] == editor]
        fig, (ax_drift, ax_sim) = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax in (ax_drift, ax_sim):
            for layer in sorted(subset[subset["edited"]]["layer"].unique()):
                ax.axvspan(layer - 0.5, layer + 0.5, color="orange", alpha=0.15, lw=0)
        for pair, rows in subset.groupby("pair"):
            if rows["drift"].notna().any():
                ax_drift.plot(rows["layer"], rows["drift"], marker=".", label=pair)
            if rows["similarity"].notna().any():
                ax_sim.plot(rows["layer"], rows["similarity"], marker=".", label=pair)
        ax_drift.set(xlabel="layer", ylabel="mean ||Δh||", title="Activation drift")
        ax_sim.set(xlabel="layer", ylabel="mean cosine", title="Directional similarity")
        for ax in (ax_drift, ax_sim):
            handles, _ = ax.get_legend_handles_labels()
            if handles:
                ax.legend(fontsize=7)
        fig.suptitle(f"Activation shift ({editor}; edited layers shaded)")
        written += _save(fig, out_dir, f"fig3_activation_shift_{editor}")
    return written


def plot_decay_curves(con: duckdb.DuckDBPyConnection, out_dir: Path) -> list[Path]:
    """Share of edits still successful (solid) and of control facts still known (dotted) against the fine-tuning
    step, one colour per (model, editor, method / layers), averaged over the runs (seeds) that share them."""
    if not has_view(con, "decay_curve"):
        return []
    data = con.execute(f"""
        SELECT r.model || ', ' || r.editor || ', ' || {finetune_label(con, sep=" / ")} AS line, c."set", c.step,
               avg(c.retained) AS retained, count(*) AS runs
        FROM decay_curve c JOIN run r USING (run_id) GROUP BY ALL ORDER BY ALL""").df()
    if data.empty:
        return []
    fig, ax = plt.subplots(figsize=(6.4, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (line, rows) in enumerate(data.groupby("line", sort=True)):
        colour = colours[i % len(colours)]
        for set_name, style in (("edits", "-"), ("control", ":")):
            subset = rows[rows["set"] == set_name]
            if not subset.empty:
                label = f"{line} (edits)" if set_name == "edits" else None
                ax.plot(subset["step"], subset["retained"], style, color=colour, marker=".", label=label)
    ax.set(xlabel="fine-tuning step", ylabel="% retained", ylim=(0, 105))
    ax.set_title("Decay curves: edits (solid) vs control facts still known (dotted)")
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "fig4_decay_curves")
