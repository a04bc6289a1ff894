"""What keeps a requester inside their own project, without a database: strict requests, the error
taxonomy of a mail server, and dbt runs that never see a platform secret. (The connection store's
promises are held against a real OpenBao: tests/integration/test_secrets_store.py.)"""

from __future__ import annotations

import os
import smtplib

import pytest

from include.dbt_platform.config import PLATFORM_DAG_IDS
from include.dbt_platform.errors import PermanentError, RequestInvalid, TransientError, classify
from include.dbt_platform.project_creation.request import parse_request
from include.dbt_platform.transformations import dbt
from tests.saga_requests import request

# --------------------------------------------------------------------------------- strict requests


def test_an_unknown_or_misspelt_field_is_refused_not_ignored():
    conf = {**request("sales"), "database": {"mode": "existing", "name": "analytics"}}
    with pytest.raises(RequestInvalid, match=r"unknown field\(s\) \['database'\]"):
        parse_request(conf)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"project_name": "sales\n"}, "lowercase identifier"),
        ({"readers": ["analysts\n"]}, "lowercase identifier"),
        ({"owner": "ana@example.com\n"}, "email"),
        ({"idempotency_key": "k1\n"}, "idempotency_key"),
        ({"project_name": "pg_sales"}, "pg_"),
        ({"readers": ["pg_read_server_files"]}, "pg_"),
        ({"database_mode": "existing", "database_name": "pg_x"}, "pg_"),
    ],
)
def test_names_must_match_whole_and_never_start_with_pg(override, message):
    with pytest.raises(RequestInvalid, match=message):
        parse_request(request("sales", **override))


@pytest.mark.parametrize("dag_id", sorted(PLATFORM_DAG_IDS))
def test_a_project_may_not_take_a_platform_dags_id(dag_id):
    with pytest.raises(RequestInvalid, match="platform DAG"):
        parse_request(request(dag_id))


# --------------------------------------------------------------------------------- mail server errors


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), TransientError),
        (smtplib.SMTPResponseException(421, b"Service not available, try again later"), TransientError),
        (smtplib.SMTPSenderRefused(451, b"Greylisted", "platform@localhost"), TransientError),
        (smtplib.SMTPRecipientsRefused({"ana@example.com": (452, b"Mailbox full")}), TransientError),
        (ConnectionRefusedError(111, "Connection refused"), TransientError),
        (TimeoutError("timed out"), TransientError),
        (smtplib.SMTPRecipientsRefused({"ana@example.com": (550, b"No such user")}), PermanentError),
        (smtplib.SMTPAuthenticationError(535, b"Authentication failed"), PermanentError),
        (smtplib.SMTPDataError(554, b"Rejected as spam"), PermanentError),
    ],
)
def test_only_a_definitive_smtp_rejection_is_permanent(exc, kind):
    err = classify(exc)
    assert type(err) is kind, err
    assert err.retryable == (kind is TransientError)


# --------------------------------------------------------------------------------- dbt's environment


def test_platform_secrets_are_recognised_and_what_the_profile_needs_is_kept():
    for name in ("AIRFLOW_CONN_PLATFORM", "AIRFLOW_VAR_TOKEN", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                 "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "DBT_PLATFORM_PG_PASSWORD",
                 "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__SECRETS__BACKEND_KWARGS", "VAULT_TOKEN"):  # fmt: skip
        assert dbt.is_platform_secret(name), name
    for name in (
        "COSMOS_CONN_POSTGRES_PASSWORD",
        "DBT_ENV_SECRET_API",
        "PATH",
        "HOME",
        "DBT_PLATFORM_SCHEMA",
    ):
        assert not dbt.is_platform_secret(name), name


def test_cosmos_dbt_runs_see_no_platform_secret(monkeypatch: pytest.MonkeyPatch):
    from cosmos.dbt import runner

    seen = {}

    def original(command, env, cwd, callbacks=None, **kwargs):
        seen["environ"] = dict(os.environ)
        seen["env"] = dict(env)
        return "result"

    monkeypatch.setattr(runner, "run_command", original)
    monkeypatch.setenv("AIRFLOW_CONN_PLATFORM", "postgres://dbt_platform:platform-pw@db/platform")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://airflow:meta-pw@db/airflow")
    assert dbt.guard_cosmos_runs() and dbt.guard_cosmos_runs(), "idempotent"
    env = {**os.environ, "COSMOS_CONN_POSTGRES_PASSWORD": "project-pw", "AIRFLOW_CONN_WAREHOUSE": "x"}
    assert runner.run_command(["dbt", "build"], env, "/tmp", callbacks=[]) == "result"
    for where in ("environ", "env"):
        values = " ".join(seen[where].values())
        assert "platform-pw" not in values and "meta-pw" not in values, where
        assert "AIRFLOW_CONN_WAREHOUSE" not in seen[where]
    assert seen["env"]["COSMOS_CONN_POSTGRES_PASSWORD"] == "project-pw", "the profile's own stays"
    assert os.environ["AIRFLOW_CONN_PLATFORM"].endswith("/platform"), "put back after the run"
