"""The role's argument spec and its defaults agree on every name and every static value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parent.parent / "roles"


@pytest.mark.parametrize("role", ["birth_stage2", "lab"])
def test_spec_and_defaults_agree(role):
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    spec = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert set(options) == set(defaults), "names differ between spec and defaults"
    for name, value in defaults.items():
        opt = options[name]
        assert opt.get("description"), f"{name} has no description"
        if isinstance(value, str) and "{{" in value:
            assert "default" not in opt, f"{name}: a templated default belongs in defaults only"
        elif "default" in opt:
            assert opt["default"] == value, f"{name}: spec default {opt['default']!r} != {value!r}"
