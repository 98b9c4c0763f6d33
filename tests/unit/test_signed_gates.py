"""The signed gates of filter_plugins/apply_gates.py, without Ansible or a database: which
stored signatures count, what a review, a permit and an apply are refused for, and what the
audit calls a broken link."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "apply_gates_signed",
    Path(__file__).parents[2] / "roles" / "birth_stage2" / "filter_plugins" / "apply_gates.py",
)
gates = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gates)

E = "e" * 64
OTHER = "f" * 64
DRYRUN = {
    "id": 1, "act": "dryrun", "run_id": "R1", "evidence_sha256": E, "principal": "alice",
    "key_fingerprint": "SHA256:alice", "evidence": {"sources_sha256": "s" * 64},
}  # fmt: skip


def review(id_=2, principal="bob", fp="SHA256:bob", verdict="approved", evidence=E, review_id=10):
    return {
        "id": id_, "act": "review", "run_id": f"rv{id_}", "evidence_sha256": evidence,
        "principal": principal, "key_fingerprint": fp, "verdict": verdict, "review_id": review_id,
    }  # fmt: skip


def permit(id_=3, permit_id=5, evidence=E, status="open", expired=False, lifetime=7200):
    return {
        "id": id_, "act": "permit", "run_id": f"p{id_}", "evidence_sha256": evidence,
        "principal": "carol", "key_fingerprint": "SHA256:carol", "permit_id": permit_id,
        "permit": {"status": status, "expired": expired, "lifetime_s": lifetime},
    }  # fmt: skip


def ok(record):
    """A birth_signature result that verifies for the record's own key and principal."""
    return {
        "problems": [],
        "signer": {"valid": True, "allowed": True, "fingerprint": record["key_fingerprint"],
                   "principals": [record["principal"]]},
    }  # fmt: skip


def checks(records, bad=()):
    out = {str(r["id"]): ok(r) for r in records}
    for rid in bad:
        out[str(rid)] = {"problems": ["signature: edited or forged"], "signer": {"valid": False}}
    return out


def gates_of(records, bad=(), permit_id=5, mode="fresh", drift=(), evidence=E):
    state = {"dryrun": DRYRUN, "records": records, "drift": list(drift)}
    current = {"evidence": evidence, "sources": "s" * 64}
    out = gates.signed_gates(state, checks(records, bad), "R1", current, mode, permit_id, "24h")
    return [p["gate"] for p in out], out


def test_a_signed_chain_opens_every_gate():
    assert gates_of([DRYRUN, review(), permit()])[0] == []


@pytest.mark.parametrize(
    ("records", "bad", "kw", "gate"),
    [
        ([DRYRUN, permit()], (), {}, "approved_independent_review"),
        ([DRYRUN, review(), permit()], (2,), {}, "approved_independent_review"),
        ([DRYRUN, review(principal="alice", fp="SHA256:alice2"), permit()], (), {},
         "approved_independent_review"),
        ([DRYRUN, review(fp="SHA256:alice"), permit()], (), {}, "approved_independent_review"),
        ([DRYRUN, review(), review(id_=4, verdict="rejected"), permit()], (), {},
         "approved_independent_review"),
        ([DRYRUN, review(evidence=OTHER), permit()], (), {}, "approved_independent_review"),
        ([DRYRUN, review(), permit(evidence=OTHER)], (), {}, "permit_evidence"),
        ([DRYRUN, review(), permit(status="revoked")], (), {}, "permit_live"),
        ([DRYRUN, review(), permit(expired=True)], (), {}, "permit_live"),
        ([DRYRUN, review(), permit(lifetime=99999 * 86400)], (), {}, "permit_expiry_cap"),
        ([DRYRUN, review(), permit()], (3,), {}, "permit_signed"),
        ([DRYRUN, review()], (), {}, "permit_signed"),
        ([DRYRUN, review(), permit()], (1,), {}, "dryrun_signed"),
        ([DRYRUN, review(), permit()], (), {"evidence": OTHER}, "evidence"),
        ([DRYRUN, review(), permit()], (), {"drift": [{"collection": "c", "unplanned": 1,
                                                         "gone": 1}]}, "codes"),
    ],
)  # fmt: skip
def test_each_broken_gate_is_named(records, bad, kw, gate):
    names, out = gates_of(records, bad, **kw)
    assert gate in names, out
    assert all(p["fix"] for p in out)


def test_a_resume_compares_the_apply_sources_not_the_moved_figures():
    names, _ = gates_of([DRYRUN, review(), permit(status="consumed")], mode="resume",
                        evidence=OTHER)  # fmt: skip
    assert names == []


@pytest.mark.parametrize(
    ("text", "seconds"), [("90m", 5400), ("2h", 7200), ("1d", 86400), ("2min", 120), ("0h", None),
                          ("h", None), ("99999d", 99999 * 86400), ("2 weeks", None)],
)  # fmt: skip
def test_duration_seconds(text, seconds):
    assert gates.duration_seconds(text) == seconds


def test_permit_problems_cap_and_owner():
    dr = {"id": 1, **DRYRUN}
    signer_ok = {"problems": []}
    out = gates.permit_problems(dr, ok(DRYRUN), signer_ok, E, E, "25h", "24h")
    assert [p["gate"] for p in out] == ["permit_expiry_cap"]
    out = gates.permit_problems(dr, ok(DRYRUN), {"problems": ["not allowed to issue permits"]},
                                E, E, "2h", "24h")  # fmt: skip
    assert [p["gate"] for p in out] == ["owner"]
    out = gates.permit_problems(None, {}, signer_ok, E, E, "2h", "24h")
    assert [p["gate"] for p in out] == ["evidence"]


def test_a_new_permit_for_an_unfinished_apply_is_not_stale():
    ledger = [{"status": "applying", "permit_id": 5}]
    out = gates.permit_problems(DRYRUN, ok(DRYRUN), {"problems": []}, E, OTHER, "2h", "24h",
                                ledger, [permit()])  # fmt: skip
    assert out == []
    out = gates.permit_problems(DRYRUN, ok(DRYRUN), {"problems": []}, E, OTHER, "2h", "24h")
    assert [p["gate"] for p in out] == ["evidence"]


def test_review_problems_name_evidence_and_reviewer():
    out = gates.review_problems(DRYRUN, ok(DRYRUN), {"problems": ["self-review: x"]}, "R1",
                                OTHER, E)  # fmt: skip
    assert [p["gate"] for p in out] == ["evidence", "reviewer"]
    assert "playbooks/review.yml" in out[0]["fix"]


def row(status="done", applied=6, births=6, born=6, permit_ids=(5,)):
    return {
        "collection": "c", "status": status, "applied": applied, "expected": 6, "permit_id": 5,
        "batches": {"batches": 1, "births": births, "permit_ids": list(permit_ids)},
        "codes": {"planned": 6, "born": born},
    }  # fmt: skip


def audit(records, reviews=None, ledger=None, bad=(), late=()):
    bob = {"id": 10, "author": "alice", "reviewer": "bob", "verdict": "approved"}
    state = {
        "reviews": reviews if reviews is not None else [bob],
        "ledger": ledger if ledger is not None else [row()],
        "late_batches": list(late),
    }
    return gates.audit({"records": records}, checks(records, bad), state)


def test_audit_of_a_clean_chain():
    out = audit([DRYRUN, review(), permit(status="consumed")])
    assert out["problems"] == []
    assert out["chains"] == [
        "c (done, 6/6) -> dry-run R1 by alice (SHA256:alice) -> review #10 by bob approved"
        " -> permit #5 by carol -> 1 batch(es), 6 births"
    ]


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"reviews": [{"id": 10, "author": "alice", "reviewer": "bob", "verdict": "approved"},
                      {"id": 11, "author": "alice", "reviewer": "mallory", "verdict": "approved"}]},
         "review row #11 (mallory approved"),
        ({"bad": (2,)}, "review record #2"),
        ({"ledger": [row(births=7, applied=7)]}, "births outside the reviewed codes"),
        ({"ledger": [row(permit_ids=(5, 6))]}, "batches ran under permit #6"),
        ({"late": [{"batch_no": 2, "ledger_id": 1, "started_at": "t", "permit_id": 5}]},
         "not covered by permit #5"),
    ],
)  # fmt: skip
def test_audit_names_each_broken_link(kw, needle):
    out = audit([DRYRUN, review(), permit(status="consumed")], **kw)
    assert any(needle in p for p in out["problems"]), out["problems"]


def test_audit_flags_a_review_by_the_authors_key():
    out = audit([DRYRUN, review(fp="SHA256:alice"), permit(status="consumed")])
    assert any("dry-run author's key" in p for p in out["problems"])
