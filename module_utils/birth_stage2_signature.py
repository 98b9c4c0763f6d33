"""Who did what, proven by OpenSSH signatures (ssh-keygen -Y sign / -Y verify).

Each act of the gated apply is signed over a canonical text naming what it binds: the
dry-run by its author (namespace birth-stage2-dryrun), the T2 review by its reviewer
(birth-stage2-review), the owner's permit by the owner (birth-stage2-permit). Who may do
what is an allowed_signers file (ssh-keygen(1), ALLOWED SIGNERS) whose namespaces="..."
option gives each key its roles. Typed names are labels; the principal is the one
allowed_signers gives the signing key.

Plain functions, no Ansible import: `canonical_text`, `parse_signature`, `fingerprint`,
`sign`, `identify` (who signed, may they sign this act) and `act_problems` (the decision:
self-review by key or principal, unknown key, wrong role). Unit-tested in
tests/unit/test_signature.py with the real ssh-keygen.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import subprocess
import tempfile

NAMESPACES = {
    "dryrun": "birth-stage2-dryrun",
    "review": "birth-stage2-review",
    "permit": "birth-stage2-permit",
}
HEADER = "birth-stage2 signed act v1"
ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"


class SignatureError(Exception):
    """A signature that cannot be made or read; the message names the cause."""


def canonical_text(act: str, fields: dict) -> str:
    """The exact text signed for an act: a header, the act, then `key: value` lines sorted
    by key. Values are single-line strings (numbers and booleans are written as JSON would);
    a value with a line break is refused, so no field can forge another."""
    if act not in NAMESPACES:
        raise SignatureError(f"unknown act {act!r}: one of {', '.join(NAMESPACES)}")
    lines = [HEADER, f"act: {act}"]
    for key in sorted(fields):
        value = fields[key]
        if value is None:
            text = ""
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        if not key.replace("_", "").isalnum() or key == "act":
            raise SignatureError(f"field name {key!r} must be letters, digits and _ (not act)")
        if "\n" in text or "\r" in text:
            raise SignatureError(f"field {key!r} has a line break: {text!r}")
        lines.append(f"{key}: {text}")
    return "\n".join(lines) + "\n"


def parse_canonical(text: str) -> dict:
    """The fields of a canonical text (inverse of canonical_text, act included)."""
    lines = text.split("\n")
    if not lines or lines[0] != HEADER:
        raise SignatureError("not a Stage 2 signed text (header missing)")
    out = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(": ")
            out[key] = value
    return out


def _read_string(blob: bytes, at: int) -> tuple[bytes, int]:
    if at + 4 > len(blob):
        raise SignatureError("truncated SSH signature")
    (n,) = struct.unpack(">I", blob[at : at + 4])
    if at + 4 + n > len(blob):
        raise SignatureError("truncated SSH signature")
    return blob[at + 4 : at + 4 + n], at + 4 + n


def parse_signature(armored: str) -> dict:
    """The SSHSIG blob's public key, namespace and hash algorithm (PROTOCOL.sshsig)."""
    text = (armored or "").strip()
    if not text.startswith(ARMOR_BEGIN) or not text.endswith(ARMOR_END):
        raise SignatureError("not an armored SSH signature (-----BEGIN SSH SIGNATURE-----)")
    body = "".join(text[len(ARMOR_BEGIN) : -len(ARMOR_END)].split())
    try:
        blob = base64.b64decode(body, validate=True)
    except ValueError as exc:
        raise SignatureError(f"SSH signature is not base64: {exc}") from None
    if blob[:6] != b"SSHSIG":
        raise SignatureError("SSH signature has no SSHSIG magic")
    at = 10  # magic + uint32 version
    pubkey, at = _read_string(blob, at)
    namespace, at = _read_string(blob, at)
    _reserved, at = _read_string(blob, at)
    hash_alg, at = _read_string(blob, at)
    key_type, _ = _read_string(pubkey, 0)
    return {
        "key_type": key_type.decode(),
        "public_key": f"{key_type.decode()} {base64.b64encode(pubkey).decode()}",
        "fingerprint": fingerprint_of_blob(pubkey),
        "namespace": namespace.decode(),
        "hash_alg": hash_alg.decode(),
    }


def fingerprint_of_blob(blob: bytes) -> str:
    """ssh-keygen -l's SHA256 fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def fingerprint(public_key_line: str) -> str:
    """The SHA256 fingerprint of an OpenSSH public key line ('ssh-ed25519 AAAA... comment')."""
    parts = (public_key_line or "").split()
    if len(parts) < 2:
        raise SignatureError(f"not an OpenSSH public key: {public_key_line!r}")
    return fingerprint_of_blob(base64.b64decode(parts[1]))


def _run(argv: list[str], stdin: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=stdin, text=True, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise SignatureError(f"{argv[0]} not found: OpenSSH's ssh-keygen is needed") from None


def sign(text: str, key: str, namespace: str, ssh_keygen: str = "ssh-keygen") -> str:
    """Sign text with a private key file, or a public key file whose private half is in
    ssh-agent (ssh-keygen -Y sign -f KEY -n NAMESPACE, data on stdin)."""
    if not key or not os.path.exists(key):
        raise SignatureError(f"signing key {key!r} not found (-e birth_stage2_signing_key=PATH)")
    proc = _run([ssh_keygen, "-Y", "sign", "-f", key, "-n", namespace], text)
    if proc.returncode != 0 or ARMOR_BEGIN not in proc.stdout:
        raise SignatureError(
            f"ssh-keygen -Y sign with {key} failed (rc {proc.returncode}): "
            + " ".join(proc.stderr.split())
        )
    return proc.stdout.strip() + "\n"


def _with_sig(signature: str):
    handle = tempfile.NamedTemporaryFile("w", suffix=".sig", delete=False)  # noqa: SIM115
    handle.write(signature if signature.endswith("\n") else signature + "\n")
    handle.close()
    return handle.name


def identify(
    text: str, signature: str, allowed_signers: str, namespace: str, ssh_keygen: str = "ssh-keygen"
) -> dict:
    """Who signed text, and may they sign in namespace?

    {valid, fingerprint, principals, principal, allowed, problem}: valid = the signature is
    good for text and namespace (ssh-keygen -Y check-novalidate); principals = those
    allowed_signers lists for the key (-Y find-principals); principal = the one of them
    the key may sign this namespace as (-Y verify, which honours namespaces="...").
    """
    out = {
        "valid": False,
        "fingerprint": None,
        "principals": [],
        "principal": None,
        "allowed": False,
        "problem": None,
    }
    try:
        out["fingerprint"] = parse_signature(signature)["fingerprint"]
    except SignatureError as exc:
        out["problem"] = f"unreadable signature: {exc}"
        return out
    if not os.path.isfile(allowed_signers):
        raise SignatureError(
            f"allowed_signers file {allowed_signers!r} not found (birth_stage2_allowed_signers)"
        )
    path = _with_sig(signature)
    try:
        check = _run([ssh_keygen, "-Y", "check-novalidate", "-n", namespace, "-s", path], text)
        if check.returncode != 0:
            out["problem"] = (
                f"the signature does not verify for this text in namespace {namespace} "
                "(edited or forged)"
            )
            return out
        out["valid"] = True
        found = _run([ssh_keygen, "-Y", "find-principals", "-s", path, "-f", allowed_signers], "")
        out["principals"] = (
            sorted({p for p in found.stdout.split() if p}) if not found.returncode else []
        )
        if not out["principals"]:
            out["problem"] = f"key {out['fingerprint']} is not in {allowed_signers}"
            return out
        for principal in out["principals"]:
            proc = _run(
                [ssh_keygen, "-Y", "verify", "-f", allowed_signers, "-I", principal,
                 "-n", namespace, "-s", path],
                text,
            )  # fmt: skip
            if proc.returncode == 0:
                out["principal"], out["allowed"] = principal, True
                return out
        out["principal"] = out["principals"][0]
        out["problem"] = (
            f"key {out['fingerprint']} ({', '.join(out['principals'])}) may not sign "
            f'{namespace}: its allowed_signers line has no namespaces="...{namespace}..."'
        )
        return out
    finally:
        os.unlink(path)


ROLE_OF = {"dryrun": "run dry-runs", "review": "review (T2)", "permit": "issue permits (owner)"}


def act_problems(act: str, signer: dict, author: dict | None = None) -> list[str]:
    """Why a signed act does not count. signer: identify()'s result for the act; author:
    the dry-run's signer ({fingerprint, principal}) for a review or a permit.

    A review (or permit) signed by the dry-run's own key, or by any key of the same
    principal, is refused; so is an unknown key or one without the act's namespace."""
    out = []
    if not signer.get("valid"):
        out.append(f"signature: {signer.get('problem') or 'does not verify'}")
    elif not signer.get("allowed"):
        out.append(f"not allowed to {ROLE_OF[act]}: {signer.get('problem')}")
    if author and act in ("review", "permit") and signer.get("fingerprint"):
        what = "self-review" if act == "review" else "self-permit"
        if signer["fingerprint"] == author.get("fingerprint"):
            out.append(
                f"{what}: signed by the dry-run's own key {signer['fingerprint']}"
                f" ({author.get('principal')})"
            )
        elif set(signer.get("principals") or []) & {author.get("principal")}:
            out.append(
                f"{what}: signed by a key of {author.get('principal')}, the dry-run's author"
            )
    return out


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# The options of the birth_signature module (library/birth_signature.py), shared with its
# action plugin (roles/birth_stage2/action_plugins/birth_signature.py), which runs
# `run_act` in the controller's own worker when the task runs on the controller.
ARGUMENT_SPEC = {
    "state": {"type": "str", "choices": ["signed", "verified"], "required": True},
    "act": {"type": "str", "choices": sorted(NAMESPACES), "required": True},
    "fields": {"type": "dict"},
    "key": {"type": "path"},
    "text": {"type": "str"},
    "signature": {"type": "str"},
    "allowed_signers": {"type": "path", "required": True},
    "author": {"type": "dict"},
    "ssh_keygen": {"type": "str", "default": "ssh-keygen"},
}
REQUIRED_IF = [
    ("state", "signed", ("fields", "key")),
    ("state", "verified", ("text", "signature")),
]


def run_act(params: dict) -> dict:
    """Sign (state signed) or verify (state verified) one act; the module's result without
    `changed`. Raises SignatureError when it cannot run (no ssh-keygen, key or
    allowed_signers); a signature that does not count is a problem in the result."""
    namespace = NAMESPACES[params["act"]]
    ssh_keygen = params.get("ssh_keygen") or "ssh-keygen"
    if params["state"] == "signed":
        text = canonical_text(params["act"], params["fields"])
        signature = sign(text, params["key"], namespace, ssh_keygen)
    else:
        text, signature = params["text"], params["signature"]
    signer = identify(text, signature, params["allowed_signers"], namespace, ssh_keygen)
    return {
        "text": text,
        "signature": signature,
        "namespace": namespace,
        "signer": signer,
        "problems": act_problems(params["act"], signer, params.get("author")),
        "text_sha256": sha256_text(text),
    }
