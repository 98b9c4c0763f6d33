#!/usr/bin/python
"""Ansible module birth_signature: sign a Stage 2 act, or say who signed one."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: birth_signature
short_description: Sign a Stage 2 act with an SSH key, or verify who signed one
description:
  - Each act of the gated apply (the dry-run, the T2 review, the owner's permit) is signed
    with OpenSSH's own signing (C(ssh-keygen -Y sign)) over a canonical text naming what it
    binds. Who may do what is an allowed_signers file whose C(namespaces="...") option gives
    each key its role (C(birth-stage2-dryrun), C(birth-stage2-review), C(birth-stage2-permit)).
  - V(signed) builds the canonical text from O(fields), signs it with O(key) and then
    identifies the signer exactly as V(verified) does.
  - V(verified) checks O(signature) over O(text) and names its signer (the principal
    allowed_signers gives the key), and whether that key may sign O(act).
  - It never fails on a signature that does not count; it returns every reason in
    C(problems) (a review or permit by the dry-run's own key or principal, an unknown key,
    a key without the act's namespace, an edited or forged signature), so the play names
    them all. It fails only when it cannot run (no ssh-keygen, no key, no allowed_signers).
  - Run it on the controller (C(delegate_to) localhost), where the keys and allowed_signers are.
  - On the controller, the role's action plugin
    (C(roles/birth_stage2/action_plugins/birth_signature.py)) runs it in Ansible's own worker,
    with the same options and result, without starting a module; on any other host the
    module runs there.
author:
  - Birth Stage 2 automation
options:
  state:
    description: V(signed) to sign O(fields); V(verified) to check O(signature) over O(text).
    type: str
    choices: [signed, verified]
    required: true
  act:
    description: The act, which selects the namespace.
    type: str
    choices: [dryrun, review, permit]
    required: true
  fields:
    description: With V(signed), what the act binds (plan code, run id, evidence sha256,
      verdict or permit terms, time); one line each in the canonical text.
    type: dict
  key:
    description: With V(signed), the signing key - a private key file, or a public key file
      whose private half is in ssh-agent.
    type: path
  text:
    description: With V(verified), the exact text that was signed.
    type: str
  signature:
    description: With V(verified), the armored signature (C(-----BEGIN SSH SIGNATURE-----)).
    type: str
  allowed_signers:
    description: The allowed_signers file (ssh-keygen(1), ALLOWED SIGNERS).
    type: path
    required: true
  author:
    description: For a review or a permit, the dry-run's signer (C(fingerprint),
      C(principal)); a signature by the same key or principal is a problem.
    type: dict
  ssh_keygen:
    description: The ssh-keygen to run.
    type: str
    default: ssh-keygen
attributes:
  check_mode:
    support: full
    description: Signing and verifying write nothing; both run in check mode.
  diff_mode:
    support: none
seealso:
  - module: birth_sql
"""

EXAMPLES = r"""
- name: Sign the review
  birth_signature:
    state: signed
    act: review
    fields:
      plan_code: QT-001
      dryrun_run_id: "{{ run }}"
      evidence_sha256: "{{ sha }}"
      verdict: approved
    key: "{{ birth_stage2_signing_key }}"
    allowed_signers: "{{ birth_stage2_allowed_signers }}"
    author: {fingerprint: "SHA256:...", principal: alice}
  delegate_to: localhost
  register: __birth_stage2_review_sig

- name: Verify a stored signature
  birth_signature:
    state: verified
    act: dryrun
    text: "{{ record.signed_text }}"
    signature: "{{ record.signature }}"
    allowed_signers: "{{ birth_stage2_allowed_signers }}"
  delegate_to: localhost
"""

RETURN = r"""
text:
  description: The canonical text that was signed (or checked).
  returned: always
  type: str
  sample: "birth-stage2 signed act v1\nact: review\nevidence_sha256: 3f...\n"
signature:
  description: The armored signature.
  returned: always
  type: str
  sample: "-----BEGIN SSH SIGNATURE-----\nU1NIU0lH...\n-----END SSH SIGNATURE-----\n"
namespace:
  description: The act's namespace.
  returned: always
  type: str
  sample: birth-stage2-review
signer:
  description: Who signed - C(valid) (the signature is good for the text), C(fingerprint),
    C(principals) (all allowed_signers names of the key), C(principal), C(allowed) (may sign
    this act), C(problem).
  returned: always
  type: dict
  sample: {"valid": true, "fingerprint": "SHA256:7c96...", "principals": ["bob"],
           "principal": "bob", "allowed": true, "problem": null}
problems:
  description: Every reason the act does not count; empty when it does.
  returned: always
  type: list
  elements: str
  sample: ["self-review: signed by a key of alice, the dry-run's author"]
text_sha256:
  description: sha256 of the text.
  returned: always
  type: str
  sample: 9b1f...
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.birth_stage2_signature import (  # noqa: E402
    ARGUMENT_SPEC,
    REQUIRED_IF,
    SignatureError,
    run_act,
)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True
    )
    try:
        result = run_act(module.params)
    except SignatureError as exc:
        module.fail_json(msg=f"birth_signature ({module.params['act']}): {exc}")
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
