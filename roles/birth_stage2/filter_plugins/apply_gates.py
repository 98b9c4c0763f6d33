"""The apply's gates, as plain functions: what an apply would do (fresh, resume or nothing)
and every reason it may not, each with the command that opens the gate.

Used by tasks/apply.yml through the `birth_stage2_apply_gates` filter; unit-tested in
tests/unit/test_apply_gates.py without Ansible or a database.
"""

from __future__ import annotations

import hashlib

REDO = (
    "run a new dry-run (ansible-playbook stage2.yml), have its evidence reviewed "
    "and confirm that run"
)


def fixes(current_sha, confirm, author):
    """How to open each gate the decision view names (current_sha: the evidence to sign)."""
    return {
        "approved_independent_review": "an independent T2 review of the current evidence, "
        f"signed by a key of someone other than {author or 'the author'}: "
        + review_cmd(confirm, current_sha),
        "open_permit": permit_cmd(current_sha),
        "no_collection_no_go": "fix that collection (its dry-run no_go says why) or leave it to "
        "its owner, then " + REDO,
        "plan_matches_dryrun": "rewrite the plan from the current dry-run: ansible-playbook "
        "stage2.yml, then review and confirm that run",
        "plan_has_rows": "write the plan: ansible-playbook stage2.yml",
        "safety_guards_green": "a safety guard is red: ansible-playbook stage2.yml --tags verify "
        "names it (docs/RUNBOOK.md#guard-red)",
        "rerun_delta_guard_green": "an earlier apply left births missing: finish it (--tags apply "
        "with its confirmed run) or investigate",
        "views": "create the views: ansible-playbook stage2.yml",
    }


def _problem(gate, reason, fix):
    return {"gate": gate, "reason": reason, "fix": fix}


def apply_mode(ledger):
    """fresh, resume or nothing, from the plan's ledger rows."""
    active = [r for r in ledger if r["status"] in ("planned", "applying")]
    failed = [r for r in ledger if r["status"] == "failed"]
    if ledger and not active and not failed:
        return "nothing"
    started = [r for r in active if r.get("permit_id") or r["status"] == "applying"]
    return "resume" if started else "fresh"


def confirm_problems(confirm, confirm_summary, confirm_sha, reports_dir):
    if not confirm_summary:
        return [
            _problem(
                "confirm",
                f"no signed dry-run record of run {confirm} on the server (reports dir "
                f"{reports_dir} is not read: the evidence lives in the database)",
                "confirm the run id of a Stage 2 run that planned and did the dry-run, signed "
                "by its author (ansible-playbook stage2.yml -e birth_stage2_signing_key=PATH)",
            )
        ]
    if not confirm_sha:
        return [
            _problem(
                "confirm",
                f"run {confirm} did no dry-run (its record has no figures sha256)",
                "confirm a run that did the dry-run phase",
            )
        ]
    return []


def failed_row_problems(ledger):
    return [
        _problem(
            "ledger",
            f"ledger row {r['id']} of {r['collection']}"
            f" is failed (applied {r['applied']} of {r['expected']})",
            "the collection changed under the apply: investigate with its owner "
            "(docs/RUNBOOK.md#apply-failed)",
        )
        for r in ledger
        if r["status"] == "failed"
    ]


def decision_problems(decision, fix, only=None):
    """The decision view's reasons ('<gate>: <detail>'), each with its fix."""
    out = []
    for reason in decision.get("reasons") or []:
        gate = reason.split(":", 1)[0]
        if only is None or gate in only:
            out.append(_problem(gate, reason, fix.get(gate, REDO)))
    return out


def resume_problems(state, active, confirm, confirm_summary, confirm_sha, permit_scope, fix):
    """A started apply continues only under its own consumed permit, from the reviewed
    dry-run it started from, with nothing moved behind its back."""
    out = []
    ids = sorted({r.get("permit_id") for r in active}, key=str)
    permit_id = ids[0] if len(ids) == 1 and ids[0] is not None else None
    permit = (state.get("permits") or {}).get(str(permit_id), {}) if permit_id else {}
    stopped = permit.get("status") == "revoked" or permit.get("expired")
    fresh_permit = state.get("open_permit") or {}
    if permit_id is not None and stopped and fresh_permit.get("id"):
        # The owner revoked (or let expire) the permit, then opened a new one: the apply
        # continues under it (the signed gates check it is bound to the same evidence).
        permit_id = fresh_permit["id"]
    elif permit_id is not None and stopped:
        out.append(
            _problem(
                "permit",
                f"the unfinished rows carry permit #{permit_id}, which was "
                f"{'revoked' if permit.get('status') == 'revoked' else 'expired'}: nothing more "
                "is applied until the owner opens a new permit bound to the same evidence",
                fix.get("open_permit", REDO),
            )
        )
    elif (
        permit_id is None
        or permit.get("status") != "consumed"
        or permit.get("scope") != permit_scope
    ):
        out.append(
            _problem(
                "permit",
                f"the unfinished rows carry permit(s) {', '.join(str(i) for i in ids)} "
                f"({permit.get('status', 'not found')}); a resume continues under the one "
                "consumed permit its first batch took",
                "investigate the ledger rows "
                + ", ".join(r["collection"] for r in active)
                + " with the owner",
            )
        )
    if (state.get("confirm_review") or {}).get("verdict") != "approved":
        out.append(
            _problem(
                "approved_independent_review",
                f"the confirmed dry-run {confirm} (evidence {confirm_sha}) has no approved "
                "review by someone other than its author",
                "confirm the reviewed dry-run this apply started from",
            )
        )
    confirmed = ((confirm_summary.get("dryrun") or {}).get("collections")) or {}
    for r in active:
        want = confirmed.get(r["collection"], {})
        now = (state.get("dryrun") or {}).get(r["collection"], {})
        if want.get("expected_delta") != r["expected"]:
            out.append(
                _problem(
                    "confirm",
                    f"{r['collection']}: the ledger plans {r['expected']} births, the confirmed "
                    f"dry-run {confirm} says {want.get('expected_delta', 'nothing')}",
                    "confirm the dry-run this apply started from",
                )
            )
        if now.get("no_go"):
            out.append(
                _problem(
                    "no_collection_no_go",
                    f"{r['collection']} is a no-go now: {now['no_go']}",
                    fix["no_collection_no_go"],
                )
            )
        elif now.get("expected_delta") != r["expected"] - r["applied"]:
            out.append(
                _problem(
                    "consistency",
                    f"{r['collection']}: dry-run delta now {now.get('expected_delta', 'unknown')}, "
                    f"the ledger expects {r['expected']} with {r['applied']} applied: births "
                    "moved outside the apply",
                    "stop and investigate; nothing more is applied",
                )
            )
    out += decision_problems(state["decision"], fix, only=("safety_guards_green", "views"))
    return permit_id, out


def apply_gates(state, confirm, confirm_summary, reports_dir, permit_scope):
    """{mode, targets, permit_id, problems} for an apply confirming dry-run `confirm`.

    state: the apply_state probe's JSON (decision, ledger, permits, open_permit,
    confirm_review, dryrun, evidence_sha256); confirm_summary: that run's summary.json.
    """
    confirm_summary = confirm_summary or {}
    confirm_sha = (confirm_summary.get("evidence") or {}).get("sha256") or ""
    author = (confirm_summary.get("evidence") or {}).get("author") or ""
    current = state.get("evidence_sha256")
    ledger = state.get("ledger") or []
    fix = fixes(
        (confirm_summary.get("evidence") or {}).get("record_sha256") or current, confirm, author
    )
    mode = apply_mode(ledger)
    active = [r for r in ledger if r["status"] in ("planned", "applying")]
    problems = confirm_problems(confirm, confirm_summary, confirm_sha, reports_dir)
    problems += failed_row_problems(ledger)
    targets, permit_id = [], None
    if mode == "fresh":
        targets = active
        permit_id = (state.get("open_permit") or {}).get("id")
        if confirm_sha and confirm_sha != current:
            problems.append(
                _problem(
                    "evidence",
                    f"the confirmed dry-run {confirm} has evidence sha256 {confirm_sha}, the "
                    f"current dry-run has {current}: the data changed since",
                    REDO,
                )
            )
        if state["decision"].get("status") != "ACTION_READY":
            problems += decision_problems(state["decision"], fix)
    elif mode == "resume":
        targets = active
        permit_id, more = resume_problems(
            state, active, confirm, confirm_summary, confirm_sha, permit_scope, fix
        )
        problems += more
    return {"mode": mode, "targets": targets, "permit_id": permit_id, "problems": problems}


def deltas(collections):
    """{collection: expected_delta} of a dry-run's per-collection figures."""
    return {c: (v or {}).get("expected_delta") for c, v in (collections or {}).items()}


def evidence_sha256(figures_sha256, codes_sha256, sources_sha256):
    """The evidence a review approves and a permit is bound to: the dry-run's figures, the
    exact codes the plan will birth and the text of the apply sources, each by its sha256."""
    for name, value in (
        ("figures", figures_sha256),
        ("codes", codes_sha256),
        ("sources", sources_sha256),
    ):
        if not isinstance(value, str) or len(value) != 64:
            raise ValueError(f"evidence: {name} sha256 missing or malformed: {value!r}")
    text = f"figures:{figures_sha256}\ncodes:{codes_sha256}\nsources:{sources_sha256}\n"
    return hashlib.sha256(text.encode()).hexdigest()


UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
AGAIN = (
    "dry-run and review again: ansible-playbook stage2.yml, then playbooks/review.yml of that run"
)


def duration_seconds(text):
    """'90m', '2h', '1d' -> seconds; None when malformed."""
    text = str(text).strip()
    num = text.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
    unit = text[len(text.rstrip("abcdefghijklmnopqrstuvwxyz")) :]
    if not num.isdigit() or int(num) < 1 or unit not in UNITS:
        return None
    return int(num) * UNITS[unit]


def review_cmd(run_id, evidence):
    return (
        "the T2 reviewer signs with their own key: ansible-playbook playbooks/review.yml "
        f"-e birth_stage2_review_verdict=approved -e birth_stage2_review_evidence={evidence} "
        f"-e birth_stage2_review_run={run_id} -e birth_stage2_signing_key=PATH"
    )


def permit_cmd(evidence):
    return (
        "the owner signs a permit with their own key: ansible-playbook playbooks/permit.yml "
        f"-e birth_stage2_permit_action=open -e birth_stage2_permit_evidence={evidence} "
        "-e birth_stage2_permit_expires_in=2h -e birth_stage2_signing_key=PATH"
    )


def _author(dryrun):
    return {"fingerprint": dryrun.get("key_fingerprint"), "principal": dryrun.get("principal")}


def _sig_ok(checks, record_id, record):
    """A stored record counts when its signature verifies today for its act, and its signer
    is the key and principal the record names."""
    c = (checks or {}).get(str(record_id)) or {}
    signer = c.get("signer") or {}
    return (
        not c.get("problems")
        and signer.get("valid")
        and signer.get("allowed")
        and signer.get("fingerprint") == record.get("key_fingerprint")
        and record.get("principal") in (signer.get("principals") or [])
    )


def dryrun_problems(dryrun, checks, run_id, current_evidence):
    """The confirmed (or reviewed) dry-run: recorded, signed by an allowed key, and its
    evidence still the current one."""
    if not dryrun:
        return [
            _problem(
                "dryrun_signed",
                f"no signed dry-run record of run {run_id} on the server",
                "run the dry-run with the plan, signed by its author: ansible-playbook "
                "stage2.yml -e birth_stage2_signing_key=PATH (reports/latest names the run)",
            )
        ]
    out = []
    if not _sig_ok(checks, dryrun["id"], dryrun):
        why = "; ".join((checks or {}).get(str(dryrun["id"]), {}).get("problems") or ["forged"])
        out.append(
            _problem(
                "dryrun_signed",
                f"the dry-run record of run {run_id} ({dryrun.get('principal')}) does not "
                f"verify: {why}",
                AGAIN,
            )
        )
    if current_evidence and dryrun.get("evidence_sha256") != current_evidence:
        out.append(
            _problem(
                "evidence",
                f"the evidence {dryrun.get('evidence_sha256')} of dry-run {run_id}"
                f" is stale, the current dry-run's evidence is {current_evidence}: the data, "
                "the plan's codes or the apply sources changed since",
                AGAIN,
            )
        )
    return out


def review_record_problems(dryrun, records, checks):
    """An approved T2 review of this evidence, signed by a key other than the dry-run's and
    of another principal; the latest valid review decides (a later rejection wins)."""
    evidence = dryrun["evidence_sha256"]
    author = _author(dryrun)
    mine = [r for r in records if r["act"] == "review" and r["evidence_sha256"] == evidence]
    valid = [
        r
        for r in mine
        if _sig_ok(checks, r["id"], r)
        and r["key_fingerprint"] != author["fingerprint"]
        and r["principal"] != author["principal"]
    ]
    if valid and valid[-1].get("verdict") == "approved":
        return []
    seen = f"{len(mine)} review record(s) of it, {len(valid)} valid"
    if valid:
        seen += f", the latest valid one #{valid[-1]['id']} {valid[-1].get('verdict')}"
    return [
        _problem(
            "approved_independent_review",
            f"no approved review of evidence {evidence} signed by a key of someone other "
            f"than the dry-run's author {author['principal']} ({seen})",
            review_cmd(dryrun["run_id"], evidence),
        )
    ]


def permit_record_problems(dryrun, records, checks, permit_id, max_expiry_s):
    """The permit the apply runs under: signed by an owner's key, bound to this evidence,
    not revoked, not expired, not issued for longer than the cap."""
    evidence = dryrun["evidence_sha256"]
    fix = permit_cmd(evidence)
    if permit_id is None:
        return [_problem("open_permit", "no open permit", fix)]
    recs = [r for r in records if r["act"] == "permit" and r.get("permit_id") == permit_id]
    if not recs:
        return [_problem("permit_signed", f"permit #{permit_id} has no signed permit record", fix)]
    rec = recs[-1]
    out = []
    if not _sig_ok(checks, rec["id"], rec):
        why = "; ".join((checks or {}).get(str(rec["id"]), {}).get("problems") or ["forged"])
        out.append(_problem("permit_signed", f"permit #{permit_id}'s signature: {why}", fix))
    elif rec["key_fingerprint"] == dryrun.get("key_fingerprint"):
        out.append(
            _problem("permit_signed", f"permit #{permit_id} is signed by the dry-run's key", fix)
        )
    if rec["evidence_sha256"] != evidence:
        out.append(
            _problem(
                "permit_evidence",
                f"permit #{permit_id} is bound to evidence {rec['evidence_sha256']}, not to "
                f"{evidence} of the confirmed dry-run {dryrun['run_id']}",
                fix,
            )
        )
    p = rec.get("permit") or {}
    if p.get("status") == "revoked":
        out.append(_problem("permit_live", f"permit #{permit_id} was revoked", fix))
    elif p.get("expired"):
        out.append(
            _problem("permit_live", f"permit #{permit_id} expired at {p.get('expires_at')}", fix)
        )
    lifetime = p.get("lifetime_s")
    if lifetime is None or lifetime > max_expiry_s:
        out.append(
            _problem(
                "permit_expiry_cap",
                f"permit #{permit_id} was issued for {lifetime} s, over the cap of "
                f"{max_expiry_s} s (birth_stage2_permit_max_expiry)",
                fix,
            )
        )
    return out


def drift_problems(drift):
    """Planned codes gone, or missing codes the plan does not name: refused before writing."""
    out = []
    for d in drift or []:
        out.append(
            _problem(
                "codes",
                f"{d['collection']}: the live missing codes differ from the reviewed ones "
                f"({d['unplanned']} missing code(s) not in the plan, "
                f"e.g. {d.get('unplanned_sample')}; "
                f"{d['gone']} planned code(s) no longer in the table, "
                f"e.g. {d.get('gone_sample')})",
                AGAIN,
            )
        )
    return out


def signed_gates(records_state, checks, confirm, current, mode, permit_id, max_expiry):
    """Every signed gate of an apply confirming dry-run `confirm` (fresh or resume).

    records_state: the run_records probe (dryrun, records, drift); checks: {record id:
    birth_signature result}; current: {evidence, sources} now (a resume compares only the
    apply sources: its figures moved with the births it wrote, its codes are checked by
    the drift probe and the procedure)."""
    if mode == "nothing":
        return []
    dryrun = records_state.get("dryrun")
    records = records_state.get("records") or []
    if not dryrun:
        return []  # apply_gates' confirm gate says so
    live = current.get("evidence") if mode == "fresh" else None
    out = dryrun_problems(dryrun, checks, confirm, live)
    sources = (dryrun.get("evidence") or {}).get("sources_sha256")
    if mode == "resume" and sources != current.get("sources"):
        out.append(
            _problem(
                "evidence",
                f"the apply sources changed since dry-run {confirm} (sha256 {sources}, now "
                f"{current.get('sources')})",
                "put the reviewed apply sources back, or " + AGAIN,
            )
        )
    out += review_record_problems(dryrun, records, checks)
    out += permit_record_problems(
        dryrun, records, checks, permit_id, duration_seconds(max_expiry) or 0
    )
    out += drift_problems(records_state.get("drift"))
    return out


def confirm_view(dryrun):
    """The confirmed dry-run's record in the shape apply_gates reads (its figures' sha256,
    author and per-collection deltas), or {} when there is none."""
    if not dryrun:
        return {}
    ev = dryrun.get("evidence") or {}
    return {
        "evidence": {
            "sha256": ev.get("figures_sha256"),
            "author": dryrun.get("principal"),
            "record_sha256": dryrun.get("evidence_sha256"),
        },
        "dryrun": {
            "collections": {c: {"expected_delta": d} for c, d in (ev.get("deltas") or {}).items()}
        },
    }


def review_problems(dryrun, dryrun_check, review, run_id, evidence, current_evidence):
    """Why a review (signed, about to be recorded) is refused."""
    out = dryrun_problems(
        dryrun, {str((dryrun or {}).get("id")): dryrun_check}, run_id, current_evidence
    )
    if not dryrun:
        return out
    if dryrun["evidence_sha256"] != evidence:
        out.append(
            _problem(
                "evidence",
                f"evidence {evidence} is not the evidence of run {run_id} "
                f"({dryrun['evidence_sha256']})",
                review_cmd(run_id, dryrun["evidence_sha256"]),
            )
        )
    for p in review.get("problems") or []:
        out.append(_problem("reviewer", p, review_cmd(run_id, dryrun["evidence_sha256"])))
    return out


def apply_started_on(evidence, ledger, records):
    """Whether an unfinished apply runs on this evidence (its rows carry a permit whose
    record is bound to it): its figures moved with its births, so it is not stale."""
    bound = {
        r.get("permit_id")
        for r in records or []
        if r.get("act") == "permit" and r.get("evidence_sha256") == evidence
    }
    return any(
        r.get("status") in ("planned", "applying") and r.get("permit_id") in bound
        for r in ledger or []
    )


def permit_problems(
    dryrun, dryrun_check, permit, evidence, current_evidence, expires_in, cap, ledger=None,
    records=None,
):  # fmt: skip
    """Why an owner's permit (signed, about to be recorded) is refused. A new permit for an
    unfinished apply of the same evidence (its old one revoked or expired) is not stale."""
    if apply_started_on(evidence, ledger, records):
        current_evidence = None
    out = []
    want, limit = duration_seconds(expires_in), duration_seconds(cap)
    if want is None or limit is None:
        out.append(
            _problem(
                "permit_expiry_cap",
                f"birth_stage2_permit_expires_in ({expires_in}) and birth_stage2_permit_max_expiry "
                f"({cap}) must be a number and s, m, min, h or d",
                permit_cmd(evidence),
            )
        )
    elif want > limit:
        out.append(
            _problem(
                "permit_expiry_cap",
                f"expiry {expires_in} is over the cap {cap} (birth_stage2_permit_max_expiry)",
                permit_cmd(evidence),
            )
        )
    if not dryrun:
        out.append(
            _problem(
                "evidence",
                f"no signed dry-run record has evidence {evidence}",
                "bind the permit to the evidence of the reviewed dry-run "
                "(evidence.sha256 of its summary.json)",
            )
        )
        return out
    run_id = dryrun["run_id"]
    out += dryrun_problems(dryrun, {str(dryrun["id"]): dryrun_check}, run_id, current_evidence)
    for p in permit.get("problems") or []:
        out.append(_problem("owner", p, permit_cmd(evidence)))
    return out


def refusal(host, what, problems):
    """One message: every closed gate and the command that opens it."""
    lines = [f"{what} refused on {host}, nothing was written. {len(problems)} gate(s) closed:"]
    for i, p in enumerate(problems, 1):
        reason = (
            p["reason"]
            if p["reason"].startswith(p["gate"] + ":")
            else (f"{p['gate']}: {p['reason']}")
        )
        lines.append(f"[{i}] {reason} => to open it: {p['fix']}")
    return " ".join(lines)


def _why(checks, record_id):
    c = (checks or {}).get(str(record_id)) or {}
    return "; ".join(c.get("problems") or []) or "signer differs from the record"


def audit(records_state, checks, audit_state):
    """playbooks/audit.yml's verdict: {chains, problems}. A chain per applied ledger row:
    dry-run -> review -> permit -> batches. A problem for every broken link: a stored
    signature that does not verify, a review row with no signed record (forged in SQL), a
    review by the author's key or principal, batches not covered by a valid permit bound to
    the reviewed evidence, births outside the reviewed codes."""
    records = records_state.get("records") or []
    problems, chains = [], []
    valid = {r["id"] for r in records if _sig_ok(checks, r["id"], r)}
    for r in records:
        if r["id"] not in valid:
            problems.append(
                f"{r['act']} record #{r['id']} ({r['principal']}, run {r['run_id']}): "
                f"{_why(checks, r['id'])}"
            )
    dryruns = {}
    for r in records:
        if r["act"] == "dryrun" and r["id"] in valid:
            dryruns[r["evidence_sha256"]] = r
    signed_reviews = {r.get("review_id"): r for r in records if r["act"] == "review"}
    for row in audit_state.get("reviews") or []:
        rec = signed_reviews.get(row["id"])
        if rec is None:
            problems.append(
                f"review row #{row['id']} ({row['reviewer']} {row['verdict']}, author "
                f"{row['author']}) has no signed review record: forged or written outside "
                "playbooks/review.yml"
            )
        elif rec["principal"] != row["reviewer"] or rec.get("verdict") != row["verdict"]:
            problems.append(
                f"review row #{row['id']} says {row['reviewer']} {row['verdict']}, its signed "
                f"record #{rec['id']} says {rec['principal']} {rec.get('verdict')}"
            )
    independent = {}
    for r in records:
        if r["act"] != "review" or r["id"] not in valid:
            continue
        d = dryruns.get(r["evidence_sha256"])
        if d and (r["key_fingerprint"] == d["key_fingerprint"] or r["principal"] == d["principal"]):
            problems.append(
                f"review record #{r['id']} is by the dry-run author's key or principal "
                f"({r['principal']}, {r['key_fingerprint']})"
            )
        elif d:
            independent.setdefault(r["evidence_sha256"], []).append(r)
    permits = {}
    for r in records:
        if r["act"] == "permit" and r["id"] in valid and r.get("permit_id") is not None:
            permits[r["permit_id"]] = r
    for row in audit_state.get("ledger") or []:
        batches = row.get("batches") or {}
        if row["status"] == "planned" and not row.get("applied") and not batches:
            continue
        name = row["collection"]
        link = [f"{name} ({row['status']}, {row['applied']}/{row['expected']})"]
        prec = permits.get(row.get("permit_id"))
        if prec is None:
            problems.append(
                f"{name}: permit #{row.get('permit_id')} has no valid signed permit record"
            )
            chains.append(" -> ".join([*link, "permit: BROKEN"]))
            continue
        evidence = prec["evidence_sha256"]
        d = dryruns.get(evidence)
        link.insert(
            1,
            f"dry-run {d['run_id']} by {d['principal']} ({d['key_fingerprint']})"
            if d
            else "dry-run: BROKEN",
        )
        if d is None:
            problems.append(f"{name}: no valid signed dry-run has evidence {evidence}")
        approved = [r for r in independent.get(evidence, []) if r.get("verdict") == "approved"]
        if approved and independent[evidence][-1].get("verdict") == "approved":
            r = approved[-1]
            link.insert(2, f"review #{r.get('review_id')} by {r['principal']} approved")
        else:
            link.insert(2, "review: BROKEN")
            problems.append(f"{name}: no valid independent approved review of evidence {evidence}")
        link.insert(3, f"permit #{prec['permit_id']} by {prec['principal']}")
        for pid in batches.get("permit_ids") or []:
            other = permits.get(pid)
            if other is None or other["evidence_sha256"] != evidence:
                problems.append(
                    f"{name}: batches ran under permit #{pid}, not a valid permit bound to "
                    f"evidence {evidence}"
                )
        births = batches.get("births") or 0
        link.append(f"{batches.get('batches', 0)} batch(es), {births} births")
        if births != row["applied"]:
            problems.append(
                f"{name}: batches wrote {births} births, the ledger says {row['applied']}"
            )
        codes = row.get("codes") or {}
        if births > (codes.get("born") or 0):
            problems.append(
                f"{name}: {births} births applied but only {codes.get('born', 0)} of the "
                f"{codes.get('planned', 0)} reviewed codes are born: births outside the "
                "reviewed codes"
            )
        chains.append(" -> ".join(link))
    for b in audit_state.get("late_batches") or []:
        problems.append(
            f"batch {b['batch_no']} of ledger row {b['ledger_id']} ran at {b['started_at']}, "
            f"not covered by permit #{b['permit_id']} (expired or missing)"
        )
    return {"chains": chains, "problems": problems}


def apply_check(after, rerun, guard_rows, rerun_view):
    """Why the apply did not end as planned, one line each (none: it did): every ledger row
    not cancelled is done with exactly its expected births, its rerun dry-run delta is 0 and
    its permit consumed; no row of the rerun-delta guard is red."""
    out = []
    for r in after.get("ledger") or []:
        if r["status"] == "cancelled":
            continue
        name = r["collection"]
        if r["status"] != "done" or r["applied"] != r["expected"]:
            out.append(f"{name} is {r['status']} with {r['applied']} of {r['expected']} applied")
        delta = (rerun.get(name) or {}).get("expected_delta")
        if delta != 0:
            shown = "unknown" if delta is None else delta
            out.append(f"{name}: rerun dry-run delta {shown}, must be 0")
        permits = after.get("permits") or {}
        permit = permits.get(str(r["permit_id"]), {}) if r.get("permit_id") else {}
        if permit.get("status", "") != "consumed":
            status = permit.get("status", "missing")
            permit_id = r.get("permit_id") or "none"
            out.append(f"{name}: permit {permit_id} is {status}, must be consumed")
    out += [
        f"rerun-delta guard red: {g['label']}"
        for g in guard_rows
        if g.get("view") == rerun_view and not g.get("ok")
    ]
    return out


def apply_growth(targets):
    """What the births of each collection must grow by since the run's first snapshot: what
    the plan still expected when the apply began (a resume grows by what was missing)."""
    return {
        r["collection"]: r["expected"] - r["applied"]
        for r in targets
        if r["expected"] - r["applied"] > 0
    }


def apply_result(after, rerun, mode, confirm, batch_size):
    """summary.json's apply key: each collection's row after the apply, the permit it ran
    under, the rerun's total delta, the mode, the confirmed run and the first batch's size."""
    out = {}
    permits = []
    total = 0
    for r in after.get("ledger") or []:
        out[r["collection"]] = {
            k: r.get(k) for k in ("expected", "applied", "batches", "status", "longest_batch_ms")
        }
        total += (rerun.get(r["collection"]) or {}).get("expected_delta") or 0
        if r.get("permit_id") and r["permit_id"] not in permits:
            permits.append(r["permit_id"])
    out.update(
        {
            "permit_id": permits[-1] if permits else None,
            "rerun_total": total,
            "mode": mode,
            "confirm": confirm,
            "batch_size": int(batch_size),
        }
    )
    return out


class FilterModule:
    def filters(self):
        return {
            "birth_stage2_apply_gates": apply_gates,
            "birth_stage2_evidence_sha256": evidence_sha256,
            "birth_stage2_deltas": deltas,
            "birth_stage2_signed_gates": signed_gates,
            "birth_stage2_confirm_view": confirm_view,
            "birth_stage2_audit": audit,
            "birth_stage2_review_problems": review_problems,
            "birth_stage2_permit_problems": permit_problems,
            "birth_stage2_refusal": refusal,
            "birth_stage2_apply_check": apply_check,
            "birth_stage2_apply_growth": apply_growth,
            "birth_stage2_apply_result": apply_result,
        }
