"""Stored results as DuckDB views over every run directory's parquet files."""

from __future__ import annotations

from pathlib import Path

import duckdb

# Each view reads one parquet file name from every complete run directory.
VIEWS = ("run", "metrics", "decay", "outcomes", "activations", "decay_curve")


class ReportError(ValueError):
    """No usable results, or results missing what a table needs."""


def connect(runs_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per table; only runs with a DONE marker are read."""
    runs_dir = Path(runs_dir)
    complete = sorted(p.parent for p in runs_dir.glob("*/DONE"))
    if not complete:
        raise ReportError(f"No complete runs under {runs_dir} (a run directory is complete once it has DONE).")
    con = duckdb.connect()
    for view in VIEWS:
        files = [str(run / f"{view}.parquet") for run in complete if (run / f"{view}.parquet").is_file()]
        if files:
            con.read_parquet(files, union_by_name=True).create_view(view)
    return con


def has_view(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name]).fetchone()
    return row is not None and bool(row[0])  # count(*) always returns a row


def columns_of(con: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    """The columns of a view (empty when the view does not exist)."""
    if not has_view(con, view):
        return set()
    return {row[0] for row in con.execute(f"SELECT column_name FROM (DESCRIBE {view})").fetchall()}


def finetune_label(con: duckdb.DuckDBPyConnection, alias: str = "r", sep: str = "/") -> str:
    """SQL for a run's fine-tuning label: `method/layers`, plus ` + <facts> facts` when fact statements were mixed
    into the corpus and ` [strategy]` for an edit-preserving strategy (runs written before those columns existed
    have neither)."""
    label = f"{alias}.ft_method || '{sep}' || {alias}.ft_layers"
    columns = columns_of(con, "run")
    if "ft_facts" in columns:
        label += f" || coalesce(' + ' || {alias}.ft_facts || ' facts', '')"
    if "ft_strategy" in columns:
        label += f" || coalesce(' [' || nullif({alias}.ft_strategy, 'none') || ']', '')"
    return label
