"""Quoting for the SQL templates: every live object name reaches SQL through these filters.

`pg_ident` double-quotes an identifier (so capitals, hyphens, spaces and embedded quotes
survive), `pg_literal` single-quotes a string, `pg_qualify` joins schema and name.
They refuse what PostgreSQL cannot store, naming the value.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

MAX_IDENT = 63


def _check(value, what):
    if not isinstance(value, str):
        raise AnsibleFilterError(f"{what} must be a string, got {type(value).__name__}: {value!r}")
    if value == "" or "\x00" in value:
        raise AnsibleFilterError(f"{what} {value!r} is empty or holds a NUL byte")
    return value


def pg_ident(value):
    """'my "odd" Table' -> '"my ""odd"" Table"'."""
    _check(value, "identifier")
    if len(value.encode()) > MAX_IDENT:
        raise AnsibleFilterError(
            f"identifier {value!r} is longer than PostgreSQL's {MAX_IDENT} bytes"
        )
    return '"' + value.replace('"', '""') + '"'


def pg_literal(value):
    """A standard-conforming string literal: "it's" -> "'it''s'"."""
    if isinstance(value, bool) or value is None:
        raise AnsibleFilterError(f"literal must be a string or number, got {value!r}")
    if isinstance(value, int | float):
        value = str(value)
    _check(value, "literal")
    return "'" + value.replace("'", "''") + "'"


def pg_qualify(name, schema):
    """name | pg_qualify(schema) -> "schema"."name"."""
    return pg_ident(schema) + "." + pg_ident(name)


class FilterModule:
    def filters(self):
        return {"pg_ident": pg_ident, "pg_literal": pg_literal, "pg_qualify": pg_qualify}
