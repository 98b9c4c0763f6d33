"""module_utils/birth_stage2_signature.py with the real ssh-keygen: canonical texts, who
signed, and which signatures do not count (self-review by key or principal, unknown key,
missing namespace, edited or forged signature)."""

from __future__ import annotations

import subprocess

import pytest
from ansible.module_utils.birth_stage2_signature import (
    NAMESPACES,
    SignatureError,
    act_problems,
    canonical_text,
    fingerprint,
    identify,
    parse_canonical,
    parse_signature,
    sign,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """alice (dry-run), bob (review), carol (permit), alice2 (a second key of alice that may
    review), dave (no namespaces line for these acts), mallory (not listed)."""
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("alice", "alice2", "bob", "carol", "dave", "mallory"):
        path = d / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
            check=True,
        )
        out[name] = path
    roles = {
        "alice": ("alice", "birth-stage2-dryrun"),
        "alice2": ("alice", "birth-stage2-review"),
        "bob": ("bob", "birth-stage2-review,birth-stage2-dryrun"),
        "carol": ("carol", "birth-stage2-permit"),
        "dave": ("dave", "git"),
    }
    lines = [
        f'{principal} namespaces="{ns}" '
        + " ".join((out[name].with_suffix(".pub")).read_text().split()[:2])
        for name, (principal, ns) in roles.items()
    ]
    allowed = d / "allowed_signers"
    allowed.write_text("\n".join(lines) + "\n")
    out["allowed"] = allowed
    return out


def fp(keys, name):
    return fingerprint(keys[name].with_suffix(".pub").read_text())


def signed(keys, name, act, fields):
    text = canonical_text(act, fields)
    return text, sign(text, str(keys[name]), NAMESPACES[act])


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"b": 2, "a": "x"}, "birth-stage2 signed act v1\nact: review\na: x\nb: 2\n"),
        ({"ok": True, "none": None}, "birth-stage2 signed act v1\nact: review\nnone: \nok: true\n"),
    ],
)
def test_canonical_text_is_sorted_and_round_trips(fields, expected):
    assert canonical_text("review", fields) == expected
    assert parse_canonical(expected)["act"] == "review"


@pytest.mark.parametrize(
    "fields", [{"a": "x\nverdict: approved"}, {"a\nb": "x"}, {"act": "permit"}]
)
def test_canonical_text_refuses_injected_lines(fields):
    with pytest.raises(SignatureError):
        canonical_text("review", fields)


def test_signature_names_its_key(keys):
    _, sig = signed(keys, "bob", "review", {"evidence_sha256": "ab"})
    parsed = parse_signature(sig)
    assert parsed["namespace"] == "birth-stage2-review"
    assert parsed["fingerprint"] == fp(keys, "bob")


def test_reviewer_identified_by_key(keys):
    text, sig = signed(keys, "bob", "review", {"evidence_sha256": "ab"})
    who = identify(text, sig, str(keys["allowed"]), NAMESPACES["review"])
    assert who["valid"] and who["allowed"] and who["principal"] == "bob"
    author = {"fingerprint": fp(keys, "alice"), "principal": "alice"}
    assert act_problems("review", who, author) == []


@pytest.mark.parametrize(
    ("signer", "act", "needles"),
    [
        (
            "alice",
            "review",
            ["not allowed to review", "self-review: signed by the dry-run's own key"],
        ),
        ("alice2", "review", ["self-review: signed by a key of alice"]),
        ("mallory", "review", ["is not in"]),
        ("dave", "review", ["not allowed to review", 'namespaces="...birth-stage2-review..."']),
        ("bob", "permit", ["not allowed to issue permits"]),
    ],
)
def test_acts_that_do_not_count(keys, signer, act, needles):
    text, sig = signed(keys, signer, act, {"evidence_sha256": "ab"})
    who = identify(text, sig, str(keys["allowed"]), NAMESPACES[act])
    problems = act_problems(act, who, {"fingerprint": fp(keys, "alice"), "principal": "alice"})
    joined = " | ".join(problems)
    for needle in needles:
        assert needle in joined, joined


def test_edited_text_or_signature_does_not_verify(keys):
    text, sig = signed(keys, "bob", "review", {"verdict": "rejected"})
    who = identify(text.replace("rejected", "approved"), sig, str(keys["allowed"]),
                   NAMESPACES["review"])  # fmt: skip
    assert not who["valid"]
    assert "edited or forged" in act_problems("review", who)[0]
    lines = sig.splitlines()
    lines[2] = lines[2][:-4] + ("AAAA" if not lines[2].endswith("AAAA") else "BBBB")
    who = identify(text, "\n".join(lines) + "\n", str(keys["allowed"]), NAMESPACES["review"])
    assert not who["valid"]


def test_signature_in_another_namespace_does_not_count(keys):
    # A dry-run signature replayed as a review.
    text, sig = signed(keys, "bob", "dryrun", {"evidence_sha256": "ab"})
    who = identify(text, sig, str(keys["allowed"]), NAMESPACES["review"])
    assert not who["valid"]


def test_missing_key_is_an_error(tmp_path):
    with pytest.raises(SignatureError, match="birth_stage2_signing_key"):
        sign("x", str(tmp_path / "none"), NAMESPACES["review"])


def test_module_signs_and_identifies(run_module, keys):
    res = run_module(
        "birth_signature",
        {"state": "signed", "act": "review", "fields": {"evidence_sha256": "ab"},
         "key": str(keys["alice"]), "allowed_signers": str(keys["allowed"]),
         "author": {"fingerprint": fp(keys, "alice"), "principal": "alice"}},
    )  # fmt: skip
    assert res["changed"] is False
    assert res["signer"]["fingerprint"] == fp(keys, "alice")
    assert any(p.startswith("self-review") for p in res["problems"])
    again = run_module(
        "birth_signature",
        {"state": "verified", "act": "review", "text": res["text"], "signature": res["signature"],
         "allowed_signers": str(keys["allowed"])},
    )  # fmt: skip
    assert again["signer"]["fingerprint"] == fp(keys, "alice")


def test_the_module_and_its_controller_action_give_the_same_result(keys, run_module):
    """The action plugin runs run_act in Ansible's worker on the controller; the module runs
    the same function in its own Python: one result, a forged signature's problem included."""
    from ansible.module_utils.birth_stage2_signature import run_act

    fields = {"plan_code": "QT-001", "dryrun_run_id": "r1", "evidence_sha256": "a" * 64}
    args = {
        "state": "signed",
        "act": "dryrun",
        "fields": fields,
        "key": str(keys["alice"]),
        "allowed_signers": str(keys["allowed"]),
    }
    by_module = run_module("birth_signature", args)
    assert by_module["changed"] is False and by_module["problems"] == []
    assert by_module["signer"]["principal"] == "alice"
    verify = {
        "state": "verified",
        "act": "dryrun",
        "text": by_module["text"],
        "signature": by_module["signature"],
        "allowed_signers": str(keys["allowed"]),
    }
    in_worker = run_act(verify)
    assert in_worker["signer"] == by_module["signer"]
    assert in_worker["text_sha256"] == by_module["text_sha256"]
    # Signed by mallory, whose key is not in allowed_signers: a problem, from either path.
    _, forged = signed(keys, "mallory", "dryrun", fields)
    assert run_act(dict(verify, signature=forged))["problems"]
    assert run_module("birth_signature", dict(verify, signature=forged))["problems"]


def test_the_action_runs_in_the_worker_only_on_the_controller():
    from tests.unit.conftest import load_action

    action = load_action("birth_signature")
    assert action.runs_on_controller("local")
    assert not action.runs_on_controller("ssh")
    assert not action.runs_on_controller("")
