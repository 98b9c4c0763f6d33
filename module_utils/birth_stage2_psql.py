"""The one way Stage 2 reaches SQL: ``docker exec -i <container> psql`` with the SQL on stdin.

Everything here is plain Python (stdlib only, no Ansible import) so that it runs on the VPS
inside an AnsiballZ payload and can be unit-tested without a database:

- ``build_command`` builds the argv (no shell, secrets only through the environment);
- ``wrap_script`` wraps a script with settings, the advisory lock, a transaction and timing
  markers, and refuses scripts that would make the wrapper lie (own COMMIT, ``\\connect`` ...);
- ``parse_output`` turns psql's unaligned output into JSON documents;
- ``explain_error`` maps psql's ``<stdin>`` line numbers back onto the script's own lines;
- ``run_psql`` runs the process.

Why stdin: the container cannot see host paths, so ``psql -f /host/file`` and ``\\i`` fail;
psql runs with ``-f -`` (read stdin as a file) so that its errors carry line numbers.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time

TRANSACTIONS = ("commit", "rollback", "none")

# rc reported when the whole psql process outlived ``timeout`` (as coreutils' timeout does).
TIMEOUT_RC = 124

MARKER_PREFIX = "@@birth_sql_"
T0_SELECT = "SELECT '@@birth_sql_t0=' || extract(epoch from clock_timestamp());"
T1_SELECT = "SELECT '@@birth_sql_t1=' || extract(epoch from clock_timestamp());"

LOCK_BUSY_TEXT = "another Stage 2 run is in progress; wait for it to finish (or stop it) and rerun"
WRAP_BROKEN_TEXT = "the script ended the wrapper's transaction itself"
WRAP_BROKEN_MESSAGE = (
    WRAP_BROKEN_TEXT + " (COMMIT, ROLLBACK or RESET ALL in it); its work up to that point"
    " may already be committed: run it with transaction: none, or remove that statement"
)

# psql variables that change how a script runs: a -v for one of them would silently turn
# off ON_ERROR_STOP, autocommit and so on, so they are refused rather than passed.
PSQL_SPECIAL_VARIABLES = frozenset(
    (
        "AUTOCOMMIT", "COMP_KEYWORD_CASE", "DBNAME", "ECHO", "ECHO_HIDDEN", "ENCODING", "ERROR",
        "FETCH_COUNT", "HIDE_TABLEAM", "HIDE_TOAST_COMPRESSION", "HISTCONTROL", "HISTFILE",
        "HISTSIZE", "HOST", "IGNOREEOF", "LASTOID", "LAST_ERROR_MESSAGE", "LAST_ERROR_SQLSTATE",
        "ON_ERROR_ROLLBACK", "ON_ERROR_STOP", "PORT", "PROMPT1", "PROMPT2", "PROMPT3", "QUIET",
        "ROW_COUNT", "SERVER_VERSION_NAME", "SERVER_VERSION_NUM", "SHELL_ERROR",
        "SHELL_EXIT_CODE", "SHOW_ALL_RESULTS", "SHOW_CONTEXT", "SINGLELINE", "SINGLESTEP",
        "SQLSTATE", "USER", "VERBOSITY", "VERSION", "VERSION_NAME", "VERSION_NUM",
        "WATCH_INTERVAL",
    )
)  # fmt: skip

# Meta-commands are refused unless listed here: psql runs shell commands (\\!, \\g |cmd,
# \\copy ... program, backquotes), writes files (\\o, \\w), reconnects (\\c) or executes query
# results as SQL (\\gexec) through them, and a value pasted into a script must never reach
# one. These are the ones the templates use; each is checked for its arguments too.
ALLOWED_META = frozenset(("gset", "if", "elif", "else", "endif"))
# Why the common dangerous ones are refused (any other gets a generic reason).
FORBIDDEN_META = {
    "c": "reconnects, dropping the wrapper's lock and transaction",
    "connect": "reconnects, dropping the wrapper's lock and transaction",
    "q": "quits before the wrapper's COMMIT/ROLLBACK",
    "quit": "quits before the wrapper's COMMIT/ROLLBACK",
    "i": "reads a path the container cannot see; stage and pipe the file instead",
    "ir": "reads a path the container cannot see; stage and pipe the file instead",
    "include": "reads a path the container cannot see; stage and pipe the file instead",
    "include_relative": "reads a path the container cannot see; stage and pipe the file instead",
    "o": "diverts the output the module parses",
    "out": "diverts the output the module parses",
    "!": "runs a shell command",
    "g": "can pipe the query's output to a shell command or write a file",
    "gx": "can pipe the query's output to a shell command or write a file",
    "copy": "can run a program or read and write files",
    "gexec": "executes query results as SQL",
    "setenv": "changes the environment of the commands psql runs",
    "w": "writes a file",
    "write": "writes a file",
    "e": "runs an editor",
    "edit": "runs an editor",
    "cd": "changes psql's directory",
    "set": "changes psql's variables (ON_ERROR_STOP and the like) behind the wrapper",
    "unset": "changes psql's variables (ON_ERROR_STOP and the like) behind the wrapper",
}
# Meta-commands that send the query buffer, ending a statement as ';' does.
SENDING_META = frozenset(("g", "gx", "gset", "gexec", "gdesc", "crosstabview", "watch"))
GUARDED_PSQL_SETTINGS = ("ON_ERROR_STOP", "AUTOCOMMIT", "ON_ERROR_ROLLBACK")
_META_NAME = re.compile(r"[A-Za-z_]*")

_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\d+(\.\d+)?\s*(us|ms|s|min|h|d)?$")
_PSQL_MSG = re.compile(
    r"^psql:(?P<src>.*?):(?P<line>\d+): (?P<sev>[A-Z]+):\s+(?P<msg>.*)$",
)
_KEPT_TAGS = ("DETAIL:", "HINT:", "CONTEXT:", "QUERY:", "LINE ")


# --------------------------------------------------------------------------- quoting


def _check_text(what, value):
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    if "\x00" in value:
        raise ValueError(f"{what} {value!r} contains a NUL byte")
    return value


def quote_ident(name):
    """Quote one SQL identifier: always double-quoted, embedded quotes doubled."""
    _check_text("identifier", name)
    if not name:
        raise ValueError("identifier must not be empty")
    return '"' + name.replace('"', '""') + '"'


def quote_qualified(name):
    """Quote ``table`` or ``schema.table`` (split on the first dot) part by part."""
    _check_text("object name", name)
    parts = name.split(".", 1)
    if any(not part for part in parts):
        raise ValueError(f"object name {name!r} has an empty part")
    return ".".join(quote_ident(part) for part in parts)


def quote_literal(value):
    """Quote a SQL string literal the way PostgreSQL's quote_literal() does."""
    _check_text("literal", value)
    quoted = "'" + value.replace("'", "''") + "'"
    if "\\" in value:
        # E'' keeps the meaning whatever standard_conforming_strings says.
        quoted = "E" + quoted.replace("\\", "\\\\")
    return quoted


# --------------------------------------------------------------------------- command


def advisory_key(lock_name):
    """Stable signed 64-bit advisory-lock key: the first 8 bytes of sha256(name)."""
    _check_text("lock_name", lock_name)
    if not lock_name:
        raise ValueError("lock_name must not be empty")
    digest = hashlib.sha256(lock_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def advisory_key_parts(key):
    """(classid, objid) as pg_locks shows a bigint advisory key (objsubid is 1)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def _check_arg(what, value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if "\x00" in value or "\n" in value or "\r" in value:
        raise ValueError(f"{what} {value!r} contains a NUL byte or a newline")
    if value.startswith("-"):
        raise ValueError(f"{what} {value!r} starts with '-' and would be read as an option")
    return value


def _var_value(name, value):
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        value = str(value)
    elif not isinstance(value, str):
        raise ValueError(f"psql var {name!r} has value {value!r}: use a string or a number")
    if "\x00" in value or "\n" in value or "\r" in value:
        raise ValueError(f"psql var {name!r} value {value!r} contains a NUL byte or a newline")
    return value


def build_command(docker_bin, container, db_user, db_name, psql_vars=None, env_names=()):
    """The argv for ``docker exec -i ... psql``; never contains a secret.

    ``env_names`` are passed as bare ``-e NAME``: docker copies each value from the client's
    environment, so a password travels through the environment, not the command line.
    """
    _check_arg("docker_bin", docker_bin)
    _check_arg("container", container)
    _check_arg("db_user", db_user)
    _check_arg("db_name", db_name)
    argv = [docker_bin, "exec", "-i"]
    for env_name in env_names or ():
        if not isinstance(env_name, str) or not _VAR_NAME.match(env_name):
            raise ValueError(f"environment variable name {env_name!r} is not a valid name")
        argv += ["-e", env_name]
    argv += [container, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    argv += ["-U", db_user, "-d", db_name]
    for name in sorted(psql_vars or {}):
        if not isinstance(name, str) or not _VAR_NAME.match(name):
            raise ValueError(f"psql var name {name!r} must match ^[A-Za-z_][A-Za-z0-9_]*$")
        if name in PSQL_SPECIAL_VARIABLES:
            raise ValueError(f"psql var name {name!r} is a psql setting and cannot be overridden")
        argv += ["-v", f"{name}={_var_value(name, psql_vars[name])}"]
    # "-f -" still reads stdin, but makes psql prefix errors with "psql:<stdin>:LINE:", the
    # line number explain_error maps back onto the script (plain stdin gives no line).
    argv += ["-f", "-"]
    return argv


# --------------------------------------------------------------------------- script scan

_WORD_START = re.compile(r"[A-Za-z_\x80-\uffff]")
_WORD = re.compile(r"[A-Za-z0-9_$\x80-\uffff]*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")


def _tokens(sql):
    """Tokens outside comments and quotes: (kind, text, line); kinds WORD, SEMI, META, OTHER.

    Enough of psql's lexer to find statement boundaries and leading keywords: comments
    (nested), '' and E'' strings, "" identifiers, $tag$ quotes and backslash meta-commands.
    Raises ValueError for an unterminated quote or comment, which would swallow the wrapper.
    """
    tokens = []
    i, n, line = 0, len(sql), 1
    while i < n:
        ch = sql[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
        elif sql.startswith("/*", i):
            start_line, depth, i = line, 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += sql[i] == "\n"
                    i += 1
            if depth:
                raise ValueError(f"line {start_line}: comment /* is never closed")
        elif ch in "'\"":
            escapes = ch == "'" and bool(tokens) and tokens[-1][1] in ("E", "e") and tokens[-1][3]
            if escapes:
                tokens.pop()  # the E prefix belongs to the string
            start_line, i = line, i + 1
            while True:
                if i >= n:
                    raise ValueError(f"line {start_line}: quote {ch} is never closed")
                if escapes and sql[i] == "\\":
                    line += sql[i + 1 : i + 2] == "\n"
                    i += 2
                    continue
                if sql[i] == ch:
                    if sql.startswith(ch, i + 1):
                        i += 2
                        continue
                    i += 1
                    break
                line += sql[i] == "\n"
                i += 1
            tokens.append(("OTHER", ch, start_line, False))
        elif ch == "$" and _DOLLAR_TAG.match(sql, i):
            tag = _DOLLAR_TAG.match(sql, i).group(0)
            end = sql.find(tag, i + len(tag))
            if end < 0:
                raise ValueError(f"line {line}: dollar quote {tag} is never closed")
            tokens.append(("OTHER", tag, line, False))
            line += sql.count("\n", i, end)
            i = end + len(tag)
        elif ch == "\\":
            end = sql.find("\n", i)
            end = n if end < 0 else end
            tokens.append(("META", sql[i + 1 : end].strip(), line, False))
            i = end
        elif ch == ";":
            tokens.append(("SEMI", ";", line, False))
            i += 1
        elif _WORD_START.match(ch):
            word = ch + _WORD.match(sql, i + 1).group(0)
            i += len(word)
            # Remember whether the word touches a following quote (the E of E'...').
            tokens.append(("WORD", word, line, sql.startswith("'", i)))
        else:
            tokens.append(("OTHER", ch, line, False))
            i += 1
    return [(kind, text.upper() if kind == "WORD" else text, ln) for kind, text, ln, _ in tokens]


def scan_script(sql):
    """Split a script into statements as psql would: ``{'statements', 'meta', 'unterminated'}``.

    ``statements`` is a list of (line, [leading words]); ``meta`` a list of (line, command);
    ``unterminated`` the line of a trailing statement without ``;`` (or None).
    """
    statements, meta = [], []
    current, atomic_depth = None, 0
    for kind, text, line in _tokens(sql):
        if kind == "META":
            meta.append((line, text))
            name = text.split(None, 1)[0] if text else ""
            if current is not None and name in SENDING_META:
                statements.append((current[0], current[1][:3]))
                current, atomic_depth = None, 0
            continue
        if kind == "SEMI":
            if current is not None and atomic_depth > 0:
                continue  # a ; inside CREATE FUNCTION ... BEGIN ATOMIC ... END
            if current is not None:
                statements.append((current[0], current[1][:3]))
            current, atomic_depth = None, 0
            continue
        if current is None:
            current = (line, [])
        words = current[1]
        if kind == "WORD":
            if atomic_depth:
                atomic_depth += text in ("BEGIN", "CASE")
                atomic_depth -= text == "END"
            elif text == "ATOMIC" and words[-1:] == ["BEGIN"] and words[:1] == ["CREATE"]:
                atomic_depth = 1
            words.append(text)
        else:
            words.append("")
    return {
        "statements": statements,
        "meta": meta,
        "unterminated": current[0] if current is not None else None,
    }


def _transaction_control(words):
    first, second = [*words, "", ""][:2]
    if first in ("BEGIN", "COMMIT", "END", "ABORT"):
        return first
    if first == "ROLLBACK" and second != "TO":
        return first
    if first in ("START", "PREPARE") and second == "TRANSACTION":
        return f"{first} TRANSACTION"
    return None


def meta_problem(command):
    """Why a meta-command (the text after its backslash) may not run, or None.

    Only ALLOWED_META pass, and only with plain arguments: no backquote (psql runs its text
    as a shell command), no second backslash (a further meta-command on the same line), and
    ``\\gset``'s prefix a plain name.
    """
    # psql reads a command name as letters (\\gset, \\copy), else one character (\\!, \\?).
    name = _META_NAME.match(command).group(0) or command[:1]
    if name not in ALLOWED_META:
        reason = FORBIDDEN_META.get(name, "is not one the Stage 2 templates use")
        allowed = ", ".join("\\" + m for m in sorted(ALLOWED_META))
        return f"\\{name} {reason}: meta-commands other than {allowed} are refused"
    args = command[len(name) :]
    if "`" in args:
        return f"\\{name} has a backquote in its arguments (psql would run it as a shell command)"
    if "\\" in args:
        return f"\\{name} is followed by another meta-command on the same line"
    words = args.split()
    if name == "gset" and (len(words) > 1 or (words and not _VAR_NAME.match(words[0]))):
        return f"\\gset takes at most one plain name as its prefix, got {args.strip()!r}"
    return None


def check_script(body, transaction):
    """Problems that would make the wrapper lie; raises ValueError listing every one."""
    scan = scan_script(body)
    problems = []
    if transaction != "none":
        for line, words in scan["statements"]:
            keyword = _transaction_control(words)
            if keyword:
                problems.append(
                    f"line {line}: {keyword} manages the transaction, which the wrapper "
                    f"owns with transaction: {transaction} (a script that manages its own "
                    "transactions runs with transaction: none)"
                )
    for line, command in scan["meta"]:
        problem = meta_problem(command)
        if problem:
            problems.append(f"line {line}: {problem}")
    if scan["unterminated"] is not None:
        problems.append(
            f"line {scan['unterminated']}: the last statement has no ';' and would run "
            "together with the wrapper's closing lines"
        )
    if problems:
        raise ValueError("; ".join(problems))
    if not scan["statements"] and not scan["meta"]:
        raise ValueError("the script contains no SQL statement")


def count_lines(body):
    """Lines of ``body`` as psql counts them (a missing final newline still ends a line)."""
    return body.count("\n") + (0 if body.endswith("\n") or not body else 1)


# --------------------------------------------------------------------------- wrapping


def _lock_block(lock_name, lock_wait_seconds):
    key = advisory_key(lock_name)
    classid, objid = advisory_key_parts(key)
    name = quote_literal(lock_name)
    busy = quote_literal(LOCK_BUSY_TEXT)
    if "$birth_lock$" in lock_name:
        raise ValueError(f"lock_name {lock_name!r} contains the wrapper's quote tag")
    return [
        "-- Stage 2 run guard: a SESSION-level advisory lock, so two Stage 2 sessions never",
        "-- overlap. It is released when psql exits (the session ends), whatever the script did.",
        "DO $birth_lock$",
        "DECLARE",
        f"  v_key constant bigint := {key};",
        "  v_deadline constant timestamptz :=",
        f"    clock_timestamp() + interval '{lock_wait_seconds} s';",
        "  v_pid integer;",
        "  v_app text;",
        "  v_started timestamptz;",
        "BEGIN",
        "  LOOP",
        "    EXIT WHEN pg_try_advisory_lock(v_key);",
        "    IF clock_timestamp() >= v_deadline THEN",
        "      SELECT l.pid, a.application_name, a.backend_start INTO v_pid, v_app, v_started",
        "        FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid",
        "       WHERE l.locktype = 'advisory' AND l.granted",
        "         AND l.database =",
        "             (SELECT oid FROM pg_database WHERE datname = current_database())",
        f"         AND l.classid = '{classid}'::oid AND l.objid = '{objid}'::oid",
        "         AND l.objsubid = 1",
        "       LIMIT 1;",
        "      RAISE EXCEPTION USING",
        "        ERRCODE = 'lock_not_available',",
        "        MESSAGE = format(",
        "          'Stage 2 lock %s (advisory key %s) is held by pid %s (application_name %s, '",
        f"          || 'backend started %s): %s', {name}, v_key,",
        "          coalesce(v_pid::text, 'unknown (released meanwhile?)'),",
        "          coalesce(quote_literal(v_app), 'unknown'),",
        "          coalesce(v_started::text, 'unknown'),",
        f"          {busy}),",
        "        HINT = format('see SELECT * FROM pg_stat_activity WHERE pid = %s;',",
        "                      coalesce(v_pid, 0));",
        "    END IF;",
        "    PERFORM pg_sleep(0.2);",
        "  END LOOP;",
        "END",
        "$birth_lock$;",
    ]


# What the database says when a session's fencing token is below one it has already seen
# (birth_sql reports such a refusal as fenced; the apply procedure says it too).
FENCE_REFUSED_TEXT = "refused by the run fence in the database"
FENCE_SETTING = "birth_stage2.fence_token"


def fence_sql(fence, transaction):
    """(session lines, check lines) of the database fence of a session that may write.

    ``fence``: ``{"token": int, "lock_name": str, "run_id": str, "table": T, "schema": S}``.
    The session lines set ``birth_stage2.fence_token`` for the whole session (the apply
    procedure reads it at every batch). The check lines, run inside the step's transaction
    (``transaction='none'``: in autocommit, before the script), record the token for the
    lock in the fence table when that table exists, unless the database has already seen a
    greater one: then they raise, and nothing of the step is written. Every value pasted is
    quoted here (hence the S608 waivers).
    """
    if not isinstance(fence, dict):
        raise ValueError(f"fence must be a mapping, got {fence!r}")
    token = fence.get("token")
    if isinstance(token, bool) or not isinstance(token, int) or token < 1:
        raise ValueError(f"fence token must be a positive integer, got {token!r}")
    for what in ("lock_name", "run_id", "table"):
        if not isinstance(fence.get(what), str) or not fence[what]:
            raise ValueError(f"fence {what} must be a non-empty string, got {fence.get(what)!r}")
        if "$birth_fence$" in fence[what]:
            raise ValueError(f"fence {what} {fence[what]!r} contains the wrapper's quote tag")
    if transaction not in TRANSACTIONS:
        raise ValueError(f"transaction {transaction!r} is not one of {', '.join(TRANSACTIONS)}")
    table = quote_ident(fence["table"])
    if fence.get("schema"):
        table = f"{quote_ident(fence['schema'])}.{table}"
    nothing = "nothing of this step was written"
    if transaction == "none":
        nothing = "nothing of this script ran"
    session = [f"SET {FENCE_SETTING} = {quote_literal(str(token))};"]
    check = [
        "-- The run fence: this session writes only while no greater fencing token was seen.",
        "DO $birth_fence$",
        "DECLARE",
        f"  v_token constant bigint := {token};",
        f"  v_lock constant text := {quote_literal(fence['lock_name'])};",
        f"  v_run constant text := {quote_literal(fence['run_id'])};",
        "  v_seen bigint;",
        "  v_seen_run text;",
        "BEGIN",
        f"  IF to_regclass({quote_literal(table)}) IS NULL THEN",
        "    RETURN;  -- no fence table yet (step 01 makes it) or any more (rollback drops it)",
        "  END IF;",
        f"  INSERT INTO {table} AS f (lock_name, token, run_id, updated_at)",
        "  VALUES (v_lock, v_token, v_run, now())",
        "  ON CONFLICT (lock_name) DO UPDATE",
        "     SET token = EXCLUDED.token, run_id = EXCLUDED.run_id,",
        "         updated_at = EXCLUDED.updated_at",
        "   WHERE f.token <= EXCLUDED.token;",
        "  IF NOT FOUND THEN",
        f"    SELECT f.token, f.run_id INTO v_seen, v_seen_run FROM {table} f",  # noqa: S608
        "     WHERE f.lock_name = v_lock;",
        "    RAISE EXCEPTION USING ERRCODE = 'lock_not_available',",
        "      MESSAGE = format(",
        "        '%s: this session is run %s with fencing token %s (lock %s), but the '",
        "        || 'database has already seen run %s with token %s: this run''s lease was '",
        "        || 'broken (another run took it over), so it stops here; %s',",
        f"        {quote_literal(FENCE_REFUSED_TEXT)}, v_run, v_token, quote_literal(v_lock),",
        "        coalesce(v_seen_run, '?'), coalesce(v_seen::text, '?'),",
        f"        {quote_literal(nothing)}),",
        "      HINT = 'see docs/RUNBOOK.md#lease-broken';",
        "  END IF;",
        "END",
        "$birth_fence$;",
    ]
    return session, check


BIRTHS_MARKER = "births"
BIRTH_LEAK_TEXT = "birth guard FAILED inside this step's own transaction"


def births_check_sql(births):
    """(lines after BEGIN, lines before COMMIT) that attribute births to the transaction.

    ``births``: ``{"schema": S, "table": T, "allowed": {collection: delta}}``, the registry
    quoted here. Its ``collection_name`` and ``id`` columns are the contract's. The SQL
    below pastes only that quoted name and a quoted literal (hence the S608 waivers).
    """
    if not isinstance(births, dict) or not births.get("table"):
        raise ValueError(
            f"births must be {{'schema': S, 'table': T, 'allowed': {{...}}}}, got {births!r}"
        )
    table = quote_ident(births["table"])
    registry = f"{quote_ident(births['schema'])}.{table}" if births.get("schema") else table
    allowed = births.get("allowed") or {}
    if not isinstance(allowed, dict):
        raise ValueError(f"births allowed must be a mapping collection -> delta, got {allowed!r}")
    for collection, delta in allowed.items():
        _check_text("births allowed collection", collection)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise ValueError(f"births allowed[{collection!r}] is {delta!r}, not an integer")
    allowed_json = quote_literal(json.dumps(allowed, sort_keys=True))
    leak = quote_literal(BIRTH_LEAK_TEXT)
    head = [
        "-- Births at the start of this transaction, in its own snapshot (REPEATABLE READ).",
        "CREATE TEMP TABLE birth_stage2_births_before ON COMMIT DROP AS",
        "  SELECT r.collection_name::text AS c, count(*)::bigint AS n,",
        f"         (SELECT max(x.id) FROM {registry} x) AS max_id",  # noqa: S608
        f"    FROM {registry} r GROUP BY 1;",
    ]
    tail = [
        "-- Births this transaction made: the same snapshot plus its own writes, nothing else.",
        "DO $birth_births$",
        "DECLARE",
        f"  v_allowed constant jsonb := {allowed_json}::jsonb;",
        "  v_delta jsonb;",
        "  v_bad text;",
        "  v_max_before bigint;",
        "  v_max_after bigint;",
        "BEGIN",
        "  SELECT max(b.max_id) INTO v_max_before FROM pg_temp.birth_stage2_births_before b;",
        f"  SELECT max(x.id) INTO v_max_after FROM {registry} x;",  # noqa: S608
        "  WITH a AS (",
        "    SELECT r.collection_name::text AS c, count(*)::bigint AS n",
        f"      FROM {registry} r GROUP BY 1",
        "  ), d AS (",
        "    SELECT coalesce(a.c, b.c) AS c, coalesce(a.n, 0) - coalesce(b.n, 0) AS delta",
        "      FROM a FULL JOIN pg_temp.birth_stage2_births_before b ON b.c = a.c",
        "  ), w AS (",
        "    SELECT coalesce(d.c, x.key) AS c, coalesce(d.delta, 0) AS delta,",
        "           coalesce(x.value::bigint, 0) AS allowed",
        "      FROM d FULL JOIN jsonb_each_text(v_allowed) x ON x.key = d.c",
        "  )",
        "  SELECT coalesce(jsonb_object_agg(w.c, w.delta) FILTER (WHERE w.delta <> 0), '{}'),",
        "         string_agg(format('%s %s (allowed %s)', quote_literal(w.c),",
        "                           to_char(w.delta, 'SG999999999999'), w.allowed), '; '",
        "                    ORDER BY w.c) FILTER (WHERE w.delta <> w.allowed)",
        "    INTO v_delta, v_bad FROM w;",
        "  IF v_bad IS NULL AND v_max_after IS DISTINCT FROM v_max_before",
        "     AND NOT EXISTS (SELECT 1 FROM jsonb_each_text(v_allowed) x",
        "                      WHERE x.value::bigint > 0) THEN",
        "    v_bad := format('a birth hidden by a deletion: the largest birth id moved '",
        "                    || 'from %s to %s while no collection''s count did',",
        "                    v_max_before, v_max_after);",
        "  END IF;",
        "  PERFORM set_config('birth_stage2.births', v_delta::text, true);",
        "  IF v_bad IS NOT NULL THEN",
        "    RAISE EXCEPTION USING ERRCODE = 'integrity_constraint_violation',",
        f"      MESSAGE = {leak} || ': ' || v_bad",
        "                || '; the step is rolled back, nothing of it was committed',",
        "      HINT = 'see docs/RUNBOOK.md#birth-leak';",
        "  END IF;",
        "END",
        "$birth_births$;",
        f"SELECT '{MARKER_PREFIX}{BIRTHS_MARKER}=' || current_setting('birth_stage2.births');",
    ]
    return head, tail


def wrap_script(
    body,
    *,
    lock_name,
    lock_wait_seconds=5,
    statement_timeout="30min",
    lock_timeout="10s",
    application_name="birth_stage2",
    transaction="commit",
    read_only=False,
    idle_timeout="5min",
    births=None,
    fence=None,
):
    """The stdin text for psql and the number of lines that precede ``body`` in it.

    ``lock_name=None`` skips the advisory lock (read-only guards must never queue behind a
    run). ``transaction='none'`` leaves transactions to the script itself.

    The session is hardened before the script's first line: ``search_path`` is
    ``pg_catalog, pg_temp`` (a function or operator planted in ``public`` can never shadow a
    built-in, so every live object is named with its schema), strings are standard
    conforming (the quoting relies on it), an idle transaction is cut after
    ``idle_timeout``, and a wrapped transaction is REPEATABLE READ: every read in it sees
    one snapshot, so concurrent commits never mix into its figures.

    ``births`` (``{"registry": quoted table name, "allowed": {collection: delta}}``), for a
    wrapped transaction that may write, counts births per collection at the transaction's
    start and again before its end, in the same snapshot: the difference is exactly what
    this transaction did, whatever the application commits meanwhile. Any difference other
    than ``allowed`` (or a birth hidden by a deletion: the largest id moved) raises before
    COMMIT, so the step rolls back; the counted difference is printed as a marker.

    ``fence`` (``{"token", "lock_name", "run_id", "table", "schema"}``, see ``fence_sql``),
    for a session that may write, sets ``birth_stage2.fence_token`` and checks the token
    against the fence table inside the step's transaction (before the script, in
    autocommit, for ``transaction='none'``): a run whose lease was broken is refused by the
    database at its next write, nothing of the step written. Read-only sessions skip it.
    """
    _check_text("script", body)
    if transaction not in TRANSACTIONS:
        raise ValueError(f"transaction {transaction!r} is not one of {', '.join(TRANSACTIONS)}")
    for what, value in (("statement_timeout", statement_timeout), ("lock_timeout", lock_timeout)):
        if not isinstance(value, str) or not _DURATION.match(value.strip()):
            raise ValueError(f"{what} {value!r} is not a duration such as '30min', '10s', '0'")
    if isinstance(lock_wait_seconds, bool) or not isinstance(lock_wait_seconds, int):
        raise ValueError(f"lock_wait_seconds {lock_wait_seconds!r} must be an integer")
    if lock_wait_seconds < 0:
        raise ValueError(f"lock_wait_seconds {lock_wait_seconds!r} must not be negative")
    if not isinstance(idle_timeout, str) or not _DURATION.match(idle_timeout.strip()):
        raise ValueError(f"idle_timeout {idle_timeout!r} is not a duration such as '5min'")
    check_script(body, transaction)
    birth_check = births_check_sql(births) if births and transaction != "none" else None
    if birth_check and read_only:
        birth_check = None  # a read-only transaction cannot birth anything
    # A read-only session writes nothing, so it has nothing to fence.
    fence_lines = fence_sql(fence, transaction) if fence and not read_only else ([], [])

    lines = [
        "-- birth_stage2 wrapper (generated): settings, run lock, transaction, timing markers.",
        "\\set ON_ERROR_STOP 1",
        # First: nothing below may resolve a name through a schema others can create in.
        "SET search_path = pg_catalog, pg_temp;",
        "SET client_encoding = 'UTF8';",
        "SET standard_conforming_strings = on;",
        f"SET application_name = {quote_literal(application_name)};",
        f"SET lock_timeout = {quote_literal(lock_timeout.strip())};",
        f"SET idle_in_transaction_session_timeout = {quote_literal(idle_timeout.strip())};",
    ]
    if lock_name is not None:
        lines += _lock_block(lock_name, lock_wait_seconds)
    # After the lock: the wait is bounded by lock_wait_seconds, not cut by statement_timeout.
    lines.append(f"SET statement_timeout = {quote_literal(statement_timeout.strip())};")
    lines += fence_lines[0]
    if read_only and transaction == "none":
        # No wrapping transaction to mark READ ONLY: make every transaction of the session so.
        lines.append("SET default_transaction_read_only = on;")
    lines.append(T0_SELECT)
    trailer = []
    if transaction == "none":
        lines += fence_lines[1]  # autocommit: recorded (or refused) before the script starts
    if transaction != "none":
        lines.append(
            "BEGIN ISOLATION LEVEL REPEATABLE READ" + (" READ ONLY;" if read_only else ";")
        )
        # Transaction-local: gone if the script commits or rolls back by itself (checked below).
        lines.append("SET LOCAL birth_stage2.wrapped = 'on';")
        # The fence first: a refused session writes nothing, not even its births table.
        lines += fence_lines[1]
        if birth_check:
            lines += birth_check[0]
            trailer += birth_check[1]
        trailer += [
            "DO $birth_wrap$ BEGIN",
            "  IF current_setting('birth_stage2.wrapped', true) IS DISTINCT FROM 'on' THEN",
            "    RAISE EXCEPTION '%', " + quote_literal(WRAP_BROKEN_MESSAGE) + ";",
            "  END IF;",
            "END $birth_wrap$;",
            "COMMIT;" if transaction == "commit" else "ROLLBACK;",
        ]
    trailer.append(T1_SELECT)
    if not body.endswith("\n"):
        body += "\n"
    text = "\n".join(lines) + "\n" + body + "\n".join(trailer) + "\n"
    return text, len(lines)


# --------------------------------------------------------------------------- results


def parse_output(stdout):
    """JSON documents from psql's unaligned, tuples-only output.

    A document may span lines (``json_agg`` puts a newline between elements); any line that
    does not start a complete JSON value lands in ``other_lines``.
    """
    markers, kept = {}, []
    for raw in (stdout or "").splitlines():
        line = raw.strip()
        if line.startswith(MARKER_PREFIX) and "=" in line:
            name, _, value = line[len(MARKER_PREFIX) :].partition("=")
            if name == BIRTHS_MARKER:
                try:
                    markers[name] = json.loads(value)
                    continue
                except ValueError:
                    pass
            try:
                markers[name] = float(value)
                continue
            except ValueError:
                pass
        kept.append(raw)
    text = "\n".join(kept)
    decoder = json.JSONDecoder()
    documents, other_lines = [], []
    pos, n = 0, len(text)
    while pos < n:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            break
        line_end = text.find("\n", pos)
        line_end = n if line_end < 0 else line_end
        try:
            value, end = decoder.raw_decode(text, pos)
        except ValueError:
            value, end = None, -1
        if end > 0:
            rest_end = text.find("\n", end)
            rest_end = n if rest_end < 0 else rest_end
            if not text[end:rest_end].strip():
                documents.append(value)
                pos = rest_end
                continue
        other_lines.append(text[pos:line_end].rstrip())
        pos = line_end
    db_ms = None
    if "t0" in markers and "t1" in markers:
        db_ms = round((markers["t1"] - markers["t0"]) * 1000.0, 3)
    return {
        "documents": documents,
        "result": documents[-1] if documents else None,
        "db_ms": db_ms,
        "other_lines": other_lines,
        "markers": markers,
    }


def stderr_lines(stderr):
    """Non-empty stderr lines, without psql's ``psql:<stdin>:N:`` prefix."""
    out = []
    for raw in (stderr or "").splitlines():
        if not raw.strip():
            continue
        match = _PSQL_MSG.match(raw)
        out.append(f"{match.group('sev')}: {match.group('msg')}" if match else raw.rstrip())
    return out


def _where(line, preamble_lines, body_lines, script_name):
    if line <= preamble_lines:
        return f"{script_name} (wrapper, before the script's first line)"
    if body_lines is not None and line > preamble_lines + body_lines:
        return f"{script_name} (wrapper, after the script's last line)"
    return f"{script_name} line {line - preamble_lines}"


def explain_error(stderr, preamble_lines, script_name, body_lines=None):
    """One readable message from psql's stderr, with the line number of the script itself.

    ``psql:<stdin>:57: ERROR:  msg`` becomes ``<script> line <57 - preamble>: ERROR: msg``;
    psql counts the line on which the failing statement ends. DETAIL, HINT, CONTEXT and the
    statement excerpt are kept; NOTICEs are not. Output that is not psql's (docker, connection
    failures) comes back as it is.
    """
    lines = (stderr or "").splitlines()
    for index, raw in enumerate(lines):
        match = _PSQL_MSG.match(raw)
        if not match or match.group("sev") not in ("ERROR", "FATAL", "PANIC"):
            continue
        message = match.group("msg").strip()
        extra = []
        for follow in lines[index + 1 :]:
            if _PSQL_MSG.match(follow):
                break
            stripped = follow.strip()
            if not stripped:
                continue
            if follow.startswith(_KEPT_TAGS) or (extra and follow[:1].isspace()):
                extra.append(re.sub(r"^([A-Z]+:)\s+", r"\1 ", follow.rstrip()))
        if LOCK_BUSY_TEXT in message:
            head = f"{script_name} did not start: ERROR: {message}"
        else:
            line = int(match.group("line"))
            where = _where(line, preamble_lines, body_lines, script_name)
            head = f"{where}: {match.group('sev')}: {message}"
        return "\n".join([head, *extra])
    # No psql error: docker or the connection failed. NOTICEs would only hide the cause.
    text = "\n".join(raw.rstrip() for raw in lines if raw.strip() and not _PSQL_MSG.match(raw))
    return f"{script_name}: {text or 'psql failed without a message on stderr'}"


# --------------------------------------------------------------------------- running


def run_psql(argv, stdin_text, timeout, env=None, watch=None, every=60, on_timeout=None):
    """Run argv with stdin_text; returns (rc, stdout, stderr, elapsed_ms). Never a shell.

    ``watch`` (optional) is called every ``every`` seconds while the process runs: the
    heartbeat of a long script. When the whole run outlives ``timeout``, ``on_timeout`` is
    called first (to stop the session inside the container, which killing the docker client
    does not), then the client is killed.
    """
    started = time.monotonic()

    def _text(data):
        if data is None:
            return ""
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else data

    def _elapsed():
        return round((time.monotonic() - started) * 1000.0, 3)

    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        return 127, "", f"cannot run {argv[0]}: {exc}", _elapsed()
    data = stdin_text.encode("utf-8")
    while True:
        left = timeout - (time.monotonic() - started)
        try:
            # communicate() may be called again after a timeout, without the input (it keeps
            # sending what is left of it).
            out, err = proc.communicate(data, timeout=max(0.01, min(every, left)))
            return proc.returncode, _text(out), _text(err), _elapsed()
        except subprocess.TimeoutExpired:
            data = None
            if time.monotonic() - started < timeout:
                if watch is not None:
                    watch()
                continue
        stopped = on_timeout() if on_timeout is not None else None
        proc.kill()
        out, err = proc.communicate()
        note = (
            f"birth_stage2: psql did not finish within {timeout} s and the docker client was "
            "killed; "
            + (
                stopped
                or "psql itself may still be running inside the container (docker exec does "
                "not stop it): look for it in pg_stat_activity by application_name"
            )
        )
        stderr = _text(err)
        return TIMEOUT_RC, _text(out), (stderr + "\n" if stderr else "") + note, _elapsed()


def connection_argument_spec():
    """Argument spec shared by every module that reaches the database."""
    return {
        "container": {"type": "str", "required": True},
        "db_name": {"type": "str", "required": True},
        "db_user": {"type": "str", "required": True},
        "db_password": {"type": "str", "no_log": True},
        "docker_bin": {"type": "str", "default": "docker"},
        "statement_timeout": {"type": "str", "default": "30min"},
        "lock_timeout": {"type": "str", "default": "10s"},
        "idle_timeout": {"type": "str", "default": "5min"},
        "timeout": {"type": "int", "default": 3600},
    }


# --------------------------------------------------------------------------- decisions


def plan_transaction(transaction, read_only, check_mode):
    """The transaction actually run, or None when the run must be skipped (check mode).

    Check mode never writes: a read-only run is harmless and runs as asked; ``commit``
    becomes ``rollback`` (a real rehearsal); a self-committing script (``none``) cannot be
    rehearsed, so it is not run at all.
    """
    if transaction not in TRANSACTIONS:
        raise ValueError(f"transaction {transaction!r} is not one of {', '.join(TRANSACTIONS)}")
    if not check_mode or read_only:
        return transaction
    if transaction == "commit":
        return "rollback"
    if transaction == "none":
        return None
    return transaction


def reported_changed(result, *, read_only, transaction):
    """``changed`` as the script reports it, else what the transaction mode implies.

    ``transaction`` is the one asked for (in check mode: what a real run would do). A
    read-only run and an asked-for ``rollback`` never change anything, whatever the script
    says. A script that manages its own transactions (``none``) is assumed to change
    something unless it says ``{"changed": false}``.
    """
    if read_only or transaction == "rollback":
        return False
    if isinstance(result, dict) and isinstance(result.get("changed"), bool):
        return result["changed"]
    return transaction in ("commit", "none")
