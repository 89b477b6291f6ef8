"""Every query that reads an answer goes through runner/store/answer.py, which follows a reused row's
reference to its source: a reader written against `requests.c.response_body` would show reused lines empty."""

from __future__ import annotations

import re
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[2] / "runner"
# Where the column may be named besides answer.py (the one reader): the source conditions of `--reuse` (an
# original answer has a body of its own), which are not reads of an answer.
ALLOWED = {"store/reuse.py": re.compile(r"src\.c\.response_body\.is_not\(None\)")}


def test_no_query_reads_response_body_around_the_reference() -> None:
    found = []
    for path in sorted(RUNNER.rglob("*.py")):
        rel = path.relative_to(RUNNER).as_posix()
        for no, line in enumerate(path.read_text().splitlines(), start=1):
            if ".c.response_body" not in line or rel == "store/answer.py":
                continue
            allowed = ALLOWED.get(rel)
            if allowed is None or not allowed.search(line):
                found.append(f"runner/{rel}:{no}: {line.strip()}")
    assert found == [], "read answers with runner.store.answer.answer():\n" + "\n".join(found)


# In the hand-written SQL (sqlite/ and postgres/ *.sql) the rule is spelled as a join: the row's own body,
# else its source's (`COALESCE(r.response_body, a.response_body)` with `a` joined on reused_from). What else may
# name the column there: writes of it, the write-back's VALUES list, and `--reuse`'s source condition.
SQL_ALLOWED = re.compile(
    r"COALESCE\(r\.response_body, a\.response_body\)"
    r"|a\.id = r\.reused_from AND r\.response_body IS NULL"
    r"|\bresponse_body = "
    r"|v\.response_body"
    r"|AS v\(id, state, response_body"
    r"|s\.response_body IS NOT NULL"
)


def test_no_hand_written_sql_reads_response_body_around_the_reference() -> None:
    found = []
    for path in sorted(RUNNER.rglob("*.sql")):
        for no, line in enumerate(path.read_text().splitlines(), start=1):
            if line.lstrip().startswith("--"):
                continue
            if "response_body" in SQL_ALLOWED.sub("", line):
                found.append(f"runner/{path.relative_to(RUNNER).as_posix()}:{no}: {line.strip()}")
    assert found == [], (
        "read answers as COALESCE(r.response_body, a.response_body), a joined on reused_from:\n" + "\n".join(found)
    )
