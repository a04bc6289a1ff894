"""Which dbt failures a retry can help (include/dbt_platform/transformations/failures.py), on the
messages PostgreSQL, libpq and dbt really print; the real runs are in
tests/integration/test_transformation_retries.py and test_source_freshness.py."""

from __future__ import annotations

import pytest

from include.dbt_platform.errors import PermanentError, TransientError
from include.dbt_platform.transformations.failures import classify_message


@pytest.mark.parametrize(
    "message",
    [
        'Database Error in model norel (models/norel.sql)\n  relation "exp_ext.missing" does not exist\n'
        "  LINE 12:     select * from exp_ext.missing\n                             ^\n"
        "  compiled code at target/run/exp/models/norel.sql",
        'Database Error in model x (models/x.sql)\n  schema "raw_loads" does not exist',
        'connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?",
        "Database Error in model x (models/x.sql)\n  server closed the connection unexpectedly\n"
        "\tThis probably means the server terminated abnormally\n\tbefore or while processing the request.",
        "Database Error in model x (models/x.sql)\n  terminating connection due to administrator command",
        "Database Error in model x (models/x.sql)\n  canceling statement due to statement timeout",
        "Database Error in model x (models/x.sql)\n  deadlock detected\n  DETAIL:  Process 1 waits for ...",
        "Database Error in model x (models/x.sql)\n  could not serialize access due to concurrent update",
        "Database Error\n  FATAL:  the database system is shutting down",
        "Database Error\n  FATAL:  sorry, too many clients already",
        # Not recognised (here: a server with German messages): retried, as before.
        "Database Error in model x (models/x.sql)\n  Syntaxfehler bei »selec«",
        "",
    ],
)
def test_retrying_can_help(message: str):
    assert isinstance(classify_message(message), TransientError)


@pytest.mark.parametrize(
    "message",
    [
        'Database Error in model syntax (models/syntax.sql)\n  syntax error at or near "selec"\n'
        "  LINE 12:     selec 1 as id\n               ^",
        'Database Error in model x (models/x.sql)\n  column "nope" does not exist\n  LINE 12: select nope from',
        "Database Error in model x (models/x.sql)\n  function double(integer) does not exist\n"
        "  HINT:  No function matches the given name and argument types.",
        "Database Error in model divzero (models/divzero.sql)\n  division by zero\n"
        "  compiled code at target/run/exp/models/divzero.sql",
        'Database Error in model x (models/x.sql)\n  invalid input syntax for type integer: "abc"',
        "Database Error in model x (models/x.sql)\n  permission denied for schema finance",
        'Database Error in model x (models/x.sql)\n  duplicate key value violates unique constraint "x_pkey"',
        "Compilation Error in model x (models/x.sql)\n  'doubled' is undefined. This can happen when calling a "
        "macro that does not exist.",
    ],
)
def test_retrying_cannot_help(message: str):
    assert isinstance(classify_message(message), PermanentError)
