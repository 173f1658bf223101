"""Results schema, environment capture and the self-contained HTML report."""
from .environment import collect_environment
from .html import render_report, write_report
from .results import SCHEMA_PATH, load_results, validate_results, write_results

__all__ = [
    "collect_environment",
    "render_report",
    "write_report",
    "SCHEMA_PATH",
    "load_results",
    "validate_results",
    "write_results",
]
