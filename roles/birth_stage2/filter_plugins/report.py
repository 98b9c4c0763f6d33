"""What the checkpoint report decides (tasks/report.yml; unit-tested).

No Ansible import: the unit tests load this file as plain Python.
"""

from __future__ import annotations


def report_status(summary):
    """COMPLETE once the plan is applied and nothing is left to birth, else PARTIAL.

    COMPLETE: this run's apply finished every row with a rerun delta of 0, or (a later run)
    every ledger row of the plan is done and the dry-run, if it ran, finds nothing missing.
    """
    apply = summary.get("apply") or {}
    rows = [v for v in apply.values() if isinstance(v, dict)]
    counters = summary.get("counters") or {}
    ledger = (counters.get("after") or counters.get("before") or {}).get("ledger") or {}
    open_rows = sum(n for status, n in ledger.items() if status not in ("done", "cancelled"))
    applied_now = (
        bool(rows)
        and all(r.get("status") == "done" for r in rows)
        and apply.get("rerun_total") == 0
    )
    dryrun = summary.get("dryrun")
    applied_before = (
        (ledger.get("done") or 0) > 0
        and open_rows == 0
        and (dryrun is None or dryrun.get("total_delta") == 0)
    )
    return "COMPLETE" if applied_now or applied_before else "PARTIAL"


class FilterModule:
    def filters(self):
        return {"birth_stage2_report_status": report_status}
