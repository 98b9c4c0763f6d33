"""Every lab test module starts from the pristine fixture, whatever ran before it."""

from __future__ import annotations

import pytest

from tests.conftest import lab_playbook


@pytest.fixture(scope="module", autouse=True)
def _pristine_lab_per_module():
    lab_playbook("playbooks/lab.yml", "-e", "lab_action=reset")
