"""The project-creation request: its DAG params (the UI trigger form) and its validation.

Pure code: no database, no Airflow. Every name derived from ``project_name`` must fit PostgreSQL's
63-byte identifier limit, so the name is limited to 40 characters (longest derivation:
``<name>_staging_rw``, ``dbt_<name>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from include.dbt_platform.config import PLATFORM_DAG_IDS
from include.dbt_platform.errors import RequestInvalid

ENVIRONMENTS = ("dev", "staging", "prod")
# Every key a request may carry (the DAG params); anything else is refused, not ignored.
FIELDS = (
    "project_name", "owner", "description", "environments", "database_mode", "database_name", "readers",
    "idempotency_key", "fault_injection",
)  # fmt: skip
MAX_NAME = 40
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$")
KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# PostgreSQL reserved key words (and a few that make confusing identifiers).
RESERVED = frozenset(
    """all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate
    collation column concurrently constraint create cross current_catalog current_date current_role
    current_schema current_time current_timestamp current_user default deferrable desc distinct do else end
    except false fetch for foreign freeze from full grant group having ilike in initially inner intersect into
    is isnull join lateral leading left like limit localtime localtimestamp natural not notnull null offset on
    only or order outer overlaps placing primary references returning right select session_user similar some
    symmetric system_user table tablesample then to trailing true union unique user using variadic verbose
    when where window with public postgres template0 template1 pg_catalog information_schema""".split()
)


@dataclass(frozen=True)
class ProjectNames:
    """Every name derived from a project's name, in one place (every lifecycle saga uses them)."""

    project_name: str

    def schema(self, env: str) -> str:
        return f"{self.project_name}_{env}"

    def login_role(self, env: str) -> str:
        return f"{self.project_name}_{env}_rw"

    def conn_id(self, env: str) -> str:
        return f"dbt_{self.project_name}_{env}"

    @property
    def owner_role(self) -> str:
        return f"{self.project_name}_owner"

    @property
    def reader_role(self) -> str:
        return f"{self.project_name}_reader"


@dataclass(frozen=True)
class ProjectRequest(ProjectNames):
    owner: str
    description: str
    environments: tuple[str, ...]
    database_mode: str
    database_name: str
    readers: tuple[str, ...]
    idempotency_key: str | None


def identifier(value, what: str, *, max_len: int = 63, pattern=NAME_RE) -> str:
    if not isinstance(value, str) or not value:
        raise RequestInvalid(f"{what} is required")
    if len(value.encode()) > max_len:
        raise RequestInvalid(f"{what} {value!r} is longer than {max_len} bytes")
    if not pattern.fullmatch(value):
        raise RequestInvalid(
            f"{what} {value!r} must be a lowercase identifier: a letter, then letters, digits or underscores"
        )
    if value in RESERVED:
        raise RequestInvalid(f"{what} {value!r} is a reserved SQL word")
    if value.startswith("pg_"):
        raise RequestInvalid(f"{what} {value!r} may not start with 'pg_' (PostgreSQL reserves it)")
    return value


def idempotency_key_of(params: dict) -> str | None:
    key = params.get("idempotency_key")
    return key if isinstance(key, str) and KEY_RE.fullmatch(key) else None


def parse_request(params: dict) -> ProjectRequest:
    """Validate the trigger's params; raise RequestInvalid with a message a person can act on."""
    unknown = sorted(set(params) - set(FIELDS))
    if unknown:
        raise RequestInvalid(f"unknown field(s) {unknown}; a request has only {list(FIELDS)}")
    name = identifier(params.get("project_name"), "project_name", max_len=MAX_NAME)
    if name in PLATFORM_DAG_IDS:
        raise RequestInvalid(f"project_name {name!r} is the id of a platform DAG; choose another name")
    owner = params.get("owner")
    if not isinstance(owner, str) or not EMAIL_RE.fullmatch(owner):
        raise RequestInvalid(f"owner must be an email address, got {owner!r}")
    description = params.get("description") or ""
    if not isinstance(description, str) or len(description) > 500:
        raise RequestInvalid("description must be text of at most 500 characters")
    envs = params.get("environments")
    if not isinstance(envs, list) or not envs:
        raise RequestInvalid(f"environments must be a non-empty list drawn from {list(ENVIRONMENTS)}")
    unknown = [e for e in envs if e not in ENVIRONMENTS]
    if unknown:
        raise RequestInvalid(f"unknown environment(s) {unknown}; choose from {list(ENVIRONMENTS)}")
    environments = tuple(e for e in ENVIRONMENTS if e in envs)  # canonical order, no duplicates
    mode = params.get("database_mode", "new")
    if mode == "new":
        database = f"dbt_{name}"
    elif mode == "existing":
        database = identifier(params.get("database_name"), "database_name")
    else:
        raise RequestInvalid(f"database_mode must be 'new' or 'existing', got {mode!r}")
    readers = params.get("readers") or []
    if not isinstance(readers, list):
        raise RequestInvalid("readers must be a list of role names")
    readers = tuple(identifier(r, "reader role", pattern=ROLE_RE) for r in readers)
    key = params.get("idempotency_key") or None
    if key is not None and idempotency_key_of(params) is None:
        raise RequestInvalid(
            "idempotency_key must be 1-128 characters of letters, digits, '.', '_', ':', '-'"
        )
    return ProjectRequest(name, owner, description, environments, mode, database, readers, key)


def dag_params() -> dict:
    """The trigger form. Airflow validates these on UI and REST triggers; parse_request re-checks."""
    from include.dbt_platform.forms import param

    return {
        "project_name": param(
            "",
            type="string",
            title="Project name",
            description="Lowercase identifier (letter first; letters, digits, _), at most 40 characters. "
            "Becomes the dbt project, the DAG id and the prefix of every database object.",
            pattern=NAME_RE.pattern,  # JSON schema patterns search: NAME_RE is anchored (^...$)
            minLength=1,
            maxLength=MAX_NAME,
        ),
        "owner": param(
            "",
            type="string",
            format="idn-email",
            title="Owner email",
            description="Who owns the project; notified when it is ready.",
        ),
        "description": param("", type=["string", "null"], title="Description", maxLength=500),
        "environments": param(
            ["dev"],
            type="array",
            title="Environments",
            description="One schema, login role and Airflow connection per environment.",
            items={"type": "string", "enum": list(ENVIRONMENTS)},
            examples=list(ENVIRONMENTS),
            minItems=1,
            uniqueItems=True,
        ),
        "database_mode": param(
            "new",
            type="string",
            enum=["new", "existing"],
            title="Database",
            description="'new' creates dbt_<project_name>; 'existing' uses the database named "
            "below (it must exist).",
        ),
        "database_name": param(
            None,
            type=["string", "null"],
            title="Existing database name",
            description="Only with database mode 'existing'.",
        ),
        "readers": param(
            [],
            type="array",
            items={"type": "string"},
            title="Reader roles",
            description="Existing PostgreSQL roles that get read access to every environment.",
        ),
        "idempotency_key": param(
            None,
            type=["string", "null"],
            title="Idempotency key",
            description="Optional. A second request with the same key creates nothing and "
            "reports the first one's outcome.",
        ),
        "fault_injection": param(
            None,
            type=["object", "null"],
            title="Fault injection (drills)",
            description="Ignored unless SAGA_FAULT_INJECTION=1 is set for Airflow. "
            '{"step": ..., "mode": "permanent|transient|timeout|crash_after_effect", '
            '"times": N, "fail_compensation_of": <step>}',
        ),
    }
