"""Owner notifications and operator alerts: always recorded, e-mailed when SMTP is configured.

The record is a row of ``platform.notifications`` in the platform database (one per saga and kind,
replaced when a retry sends again), not a file: any worker writes it, anyone with the platform
database reads it (``select * from platform.notifications where name = '<saga id>'``).

The mail goes through Airflow's own notifier, ``SmtpNotifier`` (the SMTP provider), with the SMTP
connection ``DBT_PLATFORM_SMTP_CONN_ID`` (``smtp_default``): host, port, login, and its extras
(``from_email``, ``disable_ssl``, ``disable_tls``, ``timeout``, ``retry_limit``) as the provider
documents them. Without that connection nothing is mailed; the record
below is written either way, as the platform's own trace of what it told whom.

A failure to mail is raised as it comes (``smtplib``'s exceptions, a refused connection), so the
saga classifies it: a 4xx reply or a dropped connection is retried by Airflow, a 5xx is permanent.
The hook also retries a refused send within one session ``retry_limit`` times (5 by default);
the saga's own retries make that unnecessary, so set ``"retry_limit": 0`` on the connection.
"""

from __future__ import annotations

import html

from airflow.sdk import BaseNotifier

from include.dbt_platform.adapters.postgres import Postgres, platform_dsn
from include.dbt_platform.boundaries import boundary

DEFAULT_FROM = "dbt-platform@localhost"

NOTIFICATIONS_SQL = """
create schema if not exists platform;
create table if not exists platform.notifications (
    kind text not null,        -- owner | alert
    name text not null,        -- the saga's id
    recipient text not null,
    subject text not null,
    body text not null,
    emailed boolean not null,
    at timestamptz not null default clock_timestamp(),
    primary key (kind, name)
);
"""


class NotificationLog(Postgres):
    """``platform.notifications``, through the platform database's connection."""

    service = "platform database"

    def record(self, kind: str, name: str, record: dict) -> None:
        with self.transaction() as cur:
            cur.execute("select to_regclass('platform.notifications') is not null")
            if not cur.fetchone()[0]:
                cur.execute("select pg_advisory_xact_lock(hashtext('platform-registry-schema'))")
                cur.execute(NOTIFICATIONS_SQL)
            cur.execute(
                "insert into platform.notifications (kind, name, recipient, subject, body, emailed) "
                "values (%s, %s, %s, %s, %s, %s) on conflict (kind, name) do update set "
                "recipient = excluded.recipient, subject = excluded.subject, body = excluded.body, "
                "emailed = excluded.emailed, at = clock_timestamp()",
                (kind, name, record["to"], record["subject"], record["body"], record["emailed"]),
            )

    def get(self, kind: str, name: str) -> dict | None:
        with self.cursor() as cur:
            cur.execute("select to_regclass('platform.notifications') is not null")
            if not cur.fetchone()[0]:
                return None
            cur.execute(
                "select recipient, subject, body, emailed from platform.notifications "
                "where kind = %s and name = %s",
                (kind, name),
            )
            row = cur.fetchone()
        return dict(zip(("to", "subject", "body", "emailed"), row, strict=True)) if row else None


def _smtp_connection(conn_id: str):
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:  # not configured: record only (a secrets outage is raised)
        return None


def as_html(body: str) -> str:
    """The plain-text body as the HTML ``SmtpNotifier`` sends (escaped, lines kept)."""
    return f'<pre style="font-family: sans-serif">{html.escape(body)}</pre>'


def email(*, to: str, subject: str, body: str, smtp_conn_id: str) -> bool:
    """Mail through Airflow's ``SmtpNotifier`` when the connection exists; False when it does not."""
    conn = _smtp_connection(smtp_conn_id)
    if conn is None or not conn.host:
        return False
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    SmtpNotifier(
        to=to,
        from_email=(conn.extra_dejson or {}).get("from_email") or DEFAULT_FROM,
        subject=subject,
        html_content=as_html(body),
        smtp_conn_id=smtp_conn_id,
    ).notify({})
    return True


def deliver(kind: str, name: str, *, to: str, subject: str, body: str, smtp_conn_id: str) -> dict:
    record = {"to": to, "subject": subject, "body": body, "emailed": False}
    record["emailed"] = email(to=to, subject=subject, body=body, smtp_conn_id=smtp_conn_id)
    boundary("notification sent, not yet recorded")
    log = NotificationLog(platform_dsn())
    try:
        log.record(kind, name, record)
    finally:
        log.close()
    return record


class OwnerNotifier(BaseNotifier):
    """Tell a project's owner it is ready (an Airflow notifier, usable as a callback too)."""

    template_fields = ("to", "subject", "body")

    def __init__(self, *, to: str, subject: str, body: str, record_name: str, smtp_conn_id: str) -> None:
        super().__init__()
        self.to, self.subject, self.body = to, subject, body
        self.record_name, self.smtp_conn_id = record_name, smtp_conn_id

    def notify(self, context) -> None:
        deliver(
            "owner",
            self.record_name,
            to=self.to,
            subject=self.subject,
            body=self.body,
            smtp_conn_id=self.smtp_conn_id,
        )
