"""Owner notifications and operator alerts: always recorded, e-mailed when SMTP is configured."""

from __future__ import annotations

import json
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path

from airflow.sdk import BaseNotifier

from include.dbt_platform.boundaries import boundary


def _smtp_connection(conn_id: str):
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception:  # not configured: record only
        return None


def deliver(record_dir: Path, name: str, *, to: str, subject: str, body: str, smtp_conn_id: str) -> dict:
    record = {"to": to, "subject": subject, "body": body, "at": time.time(), "emailed": False}
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
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / f"{name}.json").write_text(json.dumps(record, indent=1))
    return record


class OwnerNotifier(BaseNotifier):
    """Tell a project's owner it is ready (an Airflow notifier, usable as a callback too)."""

    template_fields = ("to", "subject", "body")

    def __init__(
        self, *, to: str, subject: str, body: str, record_dir: str, record_name: str, smtp_conn_id: str
    ) -> None:
        super().__init__()
        self.to, self.subject, self.body = to, subject, body
        self.record_dir, self.record_name, self.smtp_conn_id = record_dir, record_name, smtp_conn_id

    def notify(self, context) -> None:
        deliver(
            Path(self.record_dir),
            self.record_name,
            to=self.to,
            subject=self.subject,
            body=self.body,
            smtp_conn_id=self.smtp_conn_id,
        )
