"""The study's tables as DataFrames, each a pure function of the stored results (DuckDB views)."""

from __future__ import annotations

import duckdb
import pandas as pd

from editdecay.reporting.results import columns_of, has_view

CONFIG_COLUMNS = ["model", "dataset", "editor", "n_edits"]


def _query(con: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame:
    return con.execute(sql).df()


def es_before_after(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Table 1: ES of Med (before) and Med_ft (after) per fine-tuning method, all-layer fine-tuning; with the
    generation-based family (gen ES, docs/algorithms.md §12) beside it."""
    generation = "gen_es" in columns_of(con, "metrics")
    gen_sql = (
        """, avg(CASE WHEN m."group" = 'Med' THEN m.gen_es END) AS gen_es_before,
               avg(CASE WHEN m."group" = 'Med_ft' THEN m.gen_es END) AS gen_es_after"""
        if generation
        else ""
    )
    long = _query(
        con,
        f"""
        SELECT r.model, r.dataset, r.editor, r.n_edits, r.ft_method,
               avg(CASE WHEN m."group" = 'Med' THEN m.es END) AS es_before,
               avg(CASE WHEN m."group" = 'Med_ft' THEN m.es END) AS es_after{gen_sql}
        FROM metrics m JOIN run r USING (run_id)
        WHERE m."set" = 'edits' AND r.ft_layers = 'all'
        GROUP BY ALL ORDER BY ALL""",
    )
    return _wide(long, ["es_before", "es_after", *(["gen_es_before", "gen_es_after"] if generation else [])])


def decrease_rate(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Table 2: mean decrease rate (%) per model and fine-tuning method, with row and column averages."""
    long = _query(
        con,
        """
        SELECT r.model, r.ft_method, 100 * avg(d.decrease_rate) AS decrease_rate
        FROM decay d JOIN run r USING (run_id) WHERE r.ft_layers = 'all' GROUP BY ALL""",
    )
    if long.empty:
        return long
    table = long.pivot(index="model", columns="ft_method", values="decrease_rate")
    table["Average"] = table.mean(axis=1)
    table.loc["Average"] = table.mean(axis=0)
    return table.reset_index()


def delta_es_efr(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Table 3: ΔES (p.p.), Edit Flip Ratio and reverse flip ratio (%) with their counts, per configuration; then
    the same ΔES and EFR of the generation-based family (gen_*, docs/algorithms.md §12)."""
    generation = (
        """,
               d."generation.delta_es_pp" AS gen_delta_es_pp, 100 * d."generation.efr" AS gen_efr,
               d."generation.flips" AS gen_efr_count, d."generation.successes_after_edit" AS gen_efr_base"""
        if "generation.efr" in columns_of(con, "decay")
        else ""
    )
    return _query(
        con,
        f"""
        SELECT r.model, r.dataset, r.editor, r.n_edits, r.ft_method, r.ft_layers,
               d.delta_es_pp, 100 * d.efr AS efr, d.flips AS efr_count, d.successes_after_edit AS efr_base,
               100 * d.reverse_flip_ratio AS reverse_flip, d.reverse_flips AS reverse_count{generation}
        FROM decay d JOIN run r USING (run_id) ORDER BY ALL""",
    )


def selective_layers(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Table 5: ES / PS / NS and downstream average of Med_ft per layer policy."""
    return _query(
        con,
        """
        SELECT r.model, r.editor, r.ft_method, r.ft_layers,
               avg(m.es) AS es, avg(m.ps) AS ps, avg(m.ns) AS ns, avg(m.downstream_avg) AS downstream_avg
        FROM metrics m JOIN run r USING (run_id)
        WHERE m."set" = 'edits' AND m."group" = 'Med_ft'
        GROUP BY ALL ORDER BY ALL""",
    )


def downstream_by_edits(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Table 6: downstream average accuracy per number of edits, for each model group."""
    long = _query(
        con,
        """
        SELECT r.model, r.editor, r.n_edits, m."group", avg(m.downstream_avg) AS downstream_avg
        FROM metrics m JOIN run r USING (run_id)
        WHERE m."set" = 'edits' AND m.downstream_avg IS NOT NULL GROUP BY ALL ORDER BY ALL""",
    )
    if long.empty:
        return long
    return long.pivot_table(
        index=["model", "editor", "n_edits"], columns="group", values="downstream_avg"
    ).reset_index()


def control_vs_edits(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Edit decay beside general forgetting: ES of the edits, and the share of unedited control facts whose
    true answer is still preferred, per model group."""
    long = _query(
        con,
        """
        SELECT r.model, r.editor, r.ft_method, r.ft_layers, m."set", m."group",
               avg(CASE WHEN m."set" = 'control' THEN m.knows_true ELSE m.es END) AS success
        FROM metrics m JOIN run r USING (run_id) GROUP BY ALL""",
    )
    if long.empty:
        return long
    table = long.pivot_table(
        index=["model", "editor", "ft_method", "ft_layers", "set"], columns="group", values="success"
    ).reset_index()
    return table[[c for c in [*table.columns[:5], "M", "Med", "Mft", "Med_ft"] if c in table.columns]]


def outcome_examples(con: duckdb.DuckDBPyConnection, per_class: int = 1) -> pd.DataFrame:
    """Table 4: count of each outcome class with example edits (stable / erased / emergent / impossible)."""
    if not has_view(con, "outcomes"):
        return pd.DataFrame()
    return _query(
        con,
        f"""
        WITH counted AS (
            SELECT o.*, r.model, r.editor, r.ft_method, r.ft_layers,
                   count(*) OVER (PARTITION BY o.outcome) AS class_count,
                   row_number() OVER (PARTITION BY o.outcome ORDER BY o.run_id, o.case_id) AS rank
            FROM outcomes o JOIN run r USING (run_id))
        SELECT outcome, class_count, model, editor, ft_method, ft_layers, prompt, target_true, target_new,
               answer_M, answer_Med, answer_Med_ft, erased_to
        FROM counted WHERE rank <= {int(per_class)}
        ORDER BY CASE outcome WHEN 'stable' THEN 0 WHEN 'erased' THEN 1 WHEN 'emergent' THEN 2 ELSE 3 END""",
    )


def _wide(long: pd.DataFrame, values: list[str]) -> pd.DataFrame:
    if long.empty:
        return long
    table = long.pivot_table(index=CONFIG_COLUMNS, columns="ft_method", values=values)
    # Grouped by method, the values in the order given (before, then after).
    ordered = sorted(table.columns, key=lambda c: (c[1], values.index(c[0])))
    table = table[ordered]
    table.columns = [f"{method} {value}" for value, method in table.columns]
    return table.reset_index()


TABLES = {
    "table1_es_before_after": es_before_after,
    "table2_decrease_rate": decrease_rate,
    "table3_delta_es_efr": delta_es_efr,
    "table4_outcome_examples": outcome_examples,
    "table5_selective_layers": selective_layers,
    "table6_downstream_by_edits": downstream_by_edits,
    "control_vs_edits": control_vs_edits,
}
