"""storage/ owns every query: no module outside ``monitor/storage/`` builds SQL or runs it on a session.

Parsed, not imported, so a lazy import inside a function counts as much as one at the top. Importing
``Session`` or ``sessionmaker`` for type hints is fine; Alembic's migrations live outside both trees.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STORAGE = ROOT / "monitor" / "storage"

#: What builds a statement: sqlalchemy's statement constructors and SQL functions.
STATEMENT_NAMES = frozenset({"select", "func", "text", "update", "delete", "insert", "literal_column", "tuple_"})
#: The modules that export them.
STATEMENT_MODULES = ("sqlalchemy", "sqlalchemy.sql", "sqlalchemy.sql.expression", "sqlalchemy.future",
                     "sqlalchemy.dialects.postgresql", "sqlalchemy.dialects.sqlite")
#: What runs a statement, or reads and writes rows through the ORM, on a session or connection.
SESSION_CALLS = frozenset({"execute", "scalars", "scalar", "query", "add", "add_all", "merge", "delete", "get"})
SESSION_NAMES = ("session", "connection", "conn")


def _modules() -> list[Path]:
    files = [*(ROOT / "monitor").rglob("*.py"), *(ROOT / "stream_jobs").rglob("*.py")]
    return sorted(f for f in files if STORAGE not in f.parents)


def _receiver(node: ast.expr) -> str | None:
    """The last name of a call's receiver: ``session`` for ``session.x()``, ``_session`` for ``self._session.x()``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def sql_outside_storage(source: str) -> list[str]:
    """Each place in ``source`` that builds or runs SQL, as ``line: what``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in STATEMENT_MODULES:
            names = sorted(a.name for a in node.names if a.name in STATEMENT_NAMES or a.name == "*")
            if names:
                found.append((node.lineno, f"from {node.module} import {', '.join(names)}"))
        elif isinstance(node, ast.Attribute) and node.attr in STATEMENT_NAMES and isinstance(node.value, ast.Name) \
                and node.value.id in ("sqlalchemy", "sa"):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SESSION_CALLS:
            receiver = _receiver(node.func.value)
            if receiver is not None and receiver.lstrip("_").endswith(SESSION_NAMES):
                found.append((node.lineno, f"{receiver}.{node.func.attr}(...)"))
    return [f"{line}: {what}" for line, what in sorted(found)]


def test_no_module_outside_storage_builds_or_runs_sql():
    offenders = {str(path.relative_to(ROOT)): hits for path in _modules()
                 if (hits := sql_outside_storage(path.read_text(encoding="utf-8")))}
    assert offenders == {}, "move these queries into a function of monitor/storage/: " + "; ".join(
        f"{path} ({', '.join(hits)})" for path, hits in offenders.items())


def test_the_modules_checked_include_the_callers_of_storage():
    checked = {str(p.relative_to(ROOT)) for p in _modules()}
    assert {"monitor/replay.py", "monitor/signals/detect.py", "monitor/cli/demo.py", "stream_jobs/app.py"} <= checked
    assert not any(p.startswith("monitor/storage/") for p in checked)


@pytest.mark.parametrize(("source", "hit"), [
    ("from sqlalchemy import select\n", "1: from sqlalchemy import select"),
    ("from sqlalchemy import func as f, text\n", "1: from sqlalchemy import func, text"),
    ("def f():\n    from sqlalchemy.dialects.postgresql import insert\n",
     "2: from sqlalchemy.dialects.postgresql import insert"),
    ("import sqlalchemy\nq = sqlalchemy.select(1)\n", "2: sqlalchemy.select"),
    ("def f(session):\n    return session.scalars(q).all()\n", "2: session.scalars(...)"),
    ("def f(self):\n    self._session.execute(q)\n", "2: _session.execute(...)"),
    ("def f(session):\n    session.add(row)\n", "2: session.add(...)"),
])
def test_the_check_finds_sql(source: str, hit: str):
    assert sql_outside_storage(source) == [hit]


@pytest.mark.parametrize("source", [
    "from sqlalchemy.orm import Session, sessionmaker\n",
    "from monitor.storage.session import transaction\nwith transaction(factory) as session:\n    f(session)\n",
    "text = clean_text(post.text)\n",
    "ax.text(0, 0, 'label')\n",
    "cache.get(key)\nrows.query('x')\n",
])
def test_the_check_leaves_other_code_alone(source: str):
    assert sql_outside_storage(source) == []
