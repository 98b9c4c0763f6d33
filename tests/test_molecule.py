"""The molecule scenarios, each a test: they drive the real playbooks over SSH on the lab."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = sorted(
    p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml") if p.parent.name != "shared"
)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario):
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PY_COLORS"] = "0"
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "molecule"), "test", "-s", scenario],
        cwd=REPO,
        env=env,
        text=True,
        capture_output=True,
        timeout=1800,
    )
    log = REPO / "reports" / f"molecule-{scenario}.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    assert proc.returncode == 0, f"see {log}\n{proc.stdout[-5000:]}\n{proc.stderr[-3000:]}"
