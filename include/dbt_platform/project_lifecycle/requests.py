"""The requests of the lifecycle sagas: their DAG params (the UI forms) and their strict parsing.

Pure code, like :mod:`include.dbt_platform.project_creation.request`, whose rules they share: unknown
fields are refused, names match whole, idempotency keys are checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from include.dbt_platform.errors import RequestInvalid
from include.dbt_platform.project_creation.request import (
    ENVIRONMENTS,
    MAX_NAME,
    NAME_RE,
    ProjectNames,
    idempotency_key_of,
    identifier,
)

COMMON_FIELDS = ("project_name", "idempotency_key", "fault_injection")


@dataclass(frozen=True)
class AddEnvironmentRequest(ProjectNames):
    environment: str
    idempotency_key: str | None


@dataclass(frozen=True)
class RotateCredentialsRequest(ProjectNames):
    environments: tuple[str, ...]  # empty: every environment of the project
    idempotency_key: str | None


@dataclass(frozen=True)
class DecommissionRequest(ProjectNames):
    drop_database: bool
    idempotency_key: str | None


def _common(params: dict, fields: tuple[str, ...]) -> tuple[str, str | None]:
    unknown = sorted(set(params) - {*COMMON_FIELDS, *fields})
    if unknown:
        raise RequestInvalid(f"unknown field(s) {unknown}; a request has only {[*COMMON_FIELDS, *fields]}")
    name = identifier(params.get("project_name"), "project_name", max_len=MAX_NAME)
    key = params.get("idempotency_key") or None
    if key is not None and idempotency_key_of(params) is None:
        raise RequestInvalid(
            "idempotency_key must be 1-128 characters of letters, digits, '.', '_', ':', '-'"
        )
    return name, key


def _environment(value) -> str:
    if value not in ENVIRONMENTS:
        raise RequestInvalid(f"environment must be one of {list(ENVIRONMENTS)}, got {value!r}")
    return value


def parse_add_environment(params: dict) -> AddEnvironmentRequest:
    name, key = _common(params, ("environment",))
    return AddEnvironmentRequest(name, _environment(params.get("environment")), key)


def parse_rotate_credentials(params: dict) -> RotateCredentialsRequest:
    name, key = _common(params, ("environments",))
    envs = params.get("environments") or []
    if not isinstance(envs, list):
        raise RequestInvalid(f"environments must be a list drawn from {list(ENVIRONMENTS)} (empty: all)")
    return RotateCredentialsRequest(
        name, tuple(e for e in ENVIRONMENTS if e in {_environment(e) for e in envs}), key
    )


def parse_decommission(params: dict) -> DecommissionRequest:
    name, key = _common(params, ("drop_database",))
    drop = params.get("drop_database", False)
    if not isinstance(drop, bool):
        raise RequestInvalid(f"drop_database must be true or false, got {drop!r}")
    return DecommissionRequest(name, drop, key)


# ----------------------------------------------------------------------------- the forms


def _project_param():
    from include.dbt_platform.forms import param

    return param(
        "",
        type="string",
        title="Project name",
        description="An active project created by dbt_project_create.",
        pattern=NAME_RE.pattern,
        minLength=1,
        maxLength=MAX_NAME,
    )


def _common_params() -> dict:
    from include.dbt_platform.forms import param

    return {
        "idempotency_key": param(
            None,
            type=["string", "null"],
            title="Idempotency key",
            description="Optional. A second request with the same key does nothing and reports the first one's outcome.",
        ),
        "fault_injection": param(
            None,
            type=["object", "null"],
            title="Fault injection (drills)",
            description="Ignored unless SAGA_FAULT_INJECTION=1 is set for Airflow (docs/operations.md).",
        ),
    }


def add_environment_params() -> dict:
    from include.dbt_platform.forms import param

    return {
        "project_name": _project_param(),
        "environment": param(
            "staging",
            type="string",
            enum=list(ENVIRONMENTS),
            title="Environment to add",
            description="A schema, a login role, its Airflow connection and its grants.",
        ),
        **_common_params(),
    }


def rotate_credentials_params() -> dict:
    from include.dbt_platform.forms import param

    return {
        "project_name": _project_param(),
        "environments": param(
            [],
            type="array",
            items={"type": "string", "enum": list(ENVIRONMENTS)},
            uniqueItems=True,
            title="Environments",
            description="Whose login passwords to rotate; empty: every environment of the project.",
        ),
        **_common_params(),
    }


def decommission_params() -> dict:
    from include.dbt_platform.forms import param

    return {
        "project_name": _project_param(),
        "drop_database": param(
            False,
            type="boolean",
            title="Drop the database",
            description="Drop the project's database too (a database adopted in 'existing' mode is never "
            "dropped). Off: the data is kept, and only the project's roles lose access.",
        ),
        **_common_params(),
    }
