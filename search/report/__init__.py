"""What a finished run tells a person: ``report.md``, ``report.html`` and the PNG plots."""

from protege.search.report._report import (
    choice_importances,
    hypervolume_curve,
    rule_savings,
    write_report,
)

__all__ = ["choice_importances", "hypervolume_curve", "rule_savings", "write_report"]
