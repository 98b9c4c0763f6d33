"""The apply's steering settings (filter_plugins/steer.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "steer", Path(__file__).parents[2] / "roles" / "birth_stage2" / "filter_plugins" / "steer.py"
)
steer = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(steer)

DEFAULTS = {
    "batch_target_ms": 500, "batch_min": 100, "batch_max": 100000, "batch_lock_timeout": "5s",
    "batch_retries": 3, "batch_backoff_ms": 500, "throttle_wait_ms": 1000, "max_lag": "30s",
    "critical_lag": "", "max_lock_waiters": 0, "critical_lock_waiters": -1,
    "max_xact_age": "10min", "critical_xact_age": "", "throttle_query": "", "critical_query": "",
}  # fmt: skip


def test_the_defaults_pass():
    assert steer.problems(DEFAULTS) == []


def test_every_problem_is_listed_naming_its_variable():
    bad = {
        **DEFAULTS,
        "batch_min": 500,
        "batch_max": 10,
        "batch_lock_timeout": "",
        "max_lag": "soon",
        "batch_retries": "3; DROP",
        "throttle_wait_ms": 1,
        "critical_lock_waiters": -2,
    }
    out = steer.problems(bad)
    assert out == [
        "birth_stage2_apply_batch_lock_timeout must be a duration such as 500ms, 30s, 10min or"
        " 1h (got '')",
        "birth_stage2_apply_batch_retries must be an integer (got '3; DROP')",
        "birth_stage2_apply_throttle_wait_ms must be at least 10 (got 1)",
        "birth_stage2_apply_max_lag must be a duration such as 500ms, 30s, 10min or 1h"
        " (empty: off) (got 'soon')",
        "birth_stage2_apply_critical_lock_waiters must be at least -1 (got -2)",
        "birth_stage2_apply_batch_min (500) must not be over birth_stage2_apply_batch_max (10)",
    ]


def test_queries_must_be_one_read_only_statement():
    ok = "SELECT count(*) > 5 FROM pg_catalog.pg_stat_activity;"
    assert steer.problems({**DEFAULTS, "throttle_query": ok}) == []
    cases = {
        "DELETE FROM public.birth_registry": "must be one read-only query starting with SELECT",
        "SELECT 1; DROP TABLE public.birth_registry": "must be one statement",
        "SELECT 1 \\gexec": "may not hold a backslash",
        "SELECT '" + "x" * 2100 + "'": "characters, over 2000",
    }
    for query, needle in cases.items():
        (problem,) = steer.problems({**DEFAULTS, "critical_query": query})
        assert problem.startswith("birth_stage2_apply_critical_query ") and needle in problem


def test_unknown_settings_are_refused_and_sets_keep_their_order():
    assert steer.problems({**DEFAULTS, "batch_turbo": 1}) == [
        "unknown steering setting(s): batch_turbo"
    ]
    sets = steer.session_sets(DEFAULTS)
    assert [n for n, _ in sets] == list(steer.SETTINGS)
    assert ("critical_lag", "") in sets and ("batch_min", "100") in sets
    # -1 turns a count off: the procedure gets an empty setting.
    assert ("critical_lock_waiters", "") in sets and ("max_lock_waiters", "0") in sets
