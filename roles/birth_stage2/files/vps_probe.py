"""Preflight's probe of the VPS, run there as `python3 -c` (read only, one round trip).

    python3 -c "$(cat vps_probe.py)" STAGING_ROOT DOCKER_BIN CONTAINER

Prints one JSON document: the SSH user, what the staging root is (exists, directory, owner,
mode, writable by that user) and what `DOCKER_BIN inspect CONTAINER` answered. It decides
nothing: filter_plugins/preflight.py turns it into refusals, each with its fix.
"""

import json
import os
import pwd
import subprocess
import sys

# Built here, not typed: Ansible would read the braces of the docker format as a template.
STATE_FORMAT = "{" * 2 + "json .State" + "}" * 2


def name_of(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def staging_root(path):
    if not os.path.lexists(path):
        return {"exists": False}
    st = os.stat(path)
    return {
        "exists": True,
        "is_dir": os.path.isdir(path),
        "owner": name_of(st.st_uid),
        "mode": format(st.st_mode & 0o7777, "04o"),
        "writable": os.access(path, os.W_OK | os.X_OK),
    }


def docker(docker_bin, container):
    argv = [docker_bin, "inspect", "--type", "container", "--format", STATE_FORMAT, container]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return {"found": True, "rc": None, "err": f"{docker_bin} inspect did not answer in 30 s"}
    except OSError as exc:
        return {"found": False, "rc": None, "err": str(exc)}
    seen = {"found": True, "rc": proc.returncode, "out": proc.stdout[-2000:]}
    seen["err"] = proc.stderr[-2000:]
    if proc.returncode == 0:
        try:
            seen["state"] = json.loads(proc.stdout.strip().splitlines()[0])
        except (ValueError, IndexError):
            seen["state"] = {}
    return seen


def main(argv):
    root, docker_bin, container = argv[:3]
    print(
        json.dumps(
            {
                "user": name_of(os.geteuid()),
                "root": staging_root(root),
                "docker": docker(docker_bin, container),
            }
        )
    )


main(sys.argv[1:])
