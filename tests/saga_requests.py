"""Project-creation requests the saga tests send: a complete valid one, and bad ones with the message
each must produce. Pure data: the unit tier uses it too."""

from __future__ import annotations


def request(name: str, **overrides) -> dict:
    # Every field explicit: dag.test() reuses one DAG object, so a param left out keeps the value an
    # earlier test's conf gave it (e.g. a fault_injection).
    return {
        "project_name": name,
        "owner": "ana@example.com",
        "description": "test project",
        "environments": ["dev", "staging", "prod"],
        "database_mode": "new",
        "database_name": None,
        "readers": [],
        "idempotency_key": None,
        "fault_injection": None,
        **overrides,
    }


BAD_REQUESTS = [
    ({"project_name": "bad'quote"}, "lowercase identifier"),
    ({"project_name": "semi;colon"}, "lowercase identifier"),
    ({"project_name": "has space"}, "lowercase identifier"),
    ({"project_name": "UpperCase"}, "lowercase identifier"),
    ({"project_name": "ünïcode"}, "lowercase identifier"),
    ({"project_name": "select"}, "reserved"),
    ({"project_name": "a" * 41}, "longer than 40"),
    ({"owner": "not-an-email"}, "email"),
    ({"environments": []}, "non-empty"),
    ({"environments": ["qa"]}, "unknown environment"),
    ({"database_mode": "existing", "database_name": "no_such_db"}, "does not exist"),
]
