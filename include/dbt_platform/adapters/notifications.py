"""Owner notifications and operator alerts: always recorded, e-mailed when SMTP is configured.

The record is a row of ``platform.notifications`` in the platform database (one per saga and kind,
replaced when a retry sends again), not a file: any worker writes it, anyone with the platform
database reads it (``select * from platform.notifications where name = '<saga id>'``).
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

from airflow.sdk import BaseNotifier

from include.dbt_platform.adapters.postgres import Postgres, platform_dsn
from include.dbt_platform.boundaries import boundary

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

    try:
        return BaseHook.get_connection(conn_id)
    except Exception:  # not configured: record only
        return None


def deliver(kind: str, name: str, *, to: str, subject: str, body: str, smtp_conn_id: str) -> dict:
    record = {"to": to, "subject": subject, "body": body, "emailed": False}
    conn = _smtp_connection(smtp_conn_id)
    if conn is not None and conn.host:
        message = EmailMessage()
        message["From"] = (conn.extra_dejson or {}).get("from_email", "dbt-platform@localhost")
        message["To"], message["Subject"] = to, subject
        message.set_content(body)
        with smtplib.SMTP(conn.host, conn.port or 25, timeout=30) as smtp:
            if conn.login:
                smtp.starttls()
                smtp.login(conn.login, conn.password)
            smtp.send_message(message)
        record["emailed"] = True
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
