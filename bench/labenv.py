"""What the benchmarks share: where the repo, its venv and the lab are, and the environment
in which the docker client and ansible reach the lab."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv" / "bin"
LAB = REPO / ".lab"
CONTAINER = "birth-lab-pg"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{VENV}:{e.get('PATH', '')}"
    e["DOCKER_HOST"] = f"unix://{LAB / 'podman.sock'}"
    e["CONTAINERS_CONF"] = str(LAB / "containers.conf")
    e["ANSIBLE_FORCE_COLOR"] = "0"
    return e
