"""Every lab test module starts from the pristine fixture, whatever ran before it."""

from __future__ import annotations

import pytest

from tests.conftest import LAB_DB, lab_playbook


@pytest.fixture(scope="module", autouse=True)
def _pristine_lab_per_module():
    # BIRTH_LAB_DB points the tests at another lab database: reset that one, and leave the
    # VPS's staging and run lock to whoever works on the default database.
    extra = [] if LAB_DB == "birth_lab" else ["-e", "lab_reset_vps=false"]
    lab_playbook(
        "playbooks/lab.yml", "-e", "lab_action=reset", "-e", f"lab_db_name={LAB_DB}", *extra
    )
