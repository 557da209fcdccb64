"""Tables and figures from stored results only."""

from editdecay.reporting.figures import plot_activation_shift, plot_decay, plot_decay_curves
from editdecay.reporting.report import demo_table, format_run_summary, write_report
from editdecay.reporting.results import ReportError, connect
from editdecay.reporting.tables import TABLES

__all__ = [
    "TABLES",
    "ReportError",
    "connect",
    "demo_table",
    "format_run_summary",
    "plot_activation_shift",
    "plot_decay",
    "plot_decay_curves",
    "write_report",
]
