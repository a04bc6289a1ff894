"""Owner notifications and operator alerts: always recorded, e-mailed when SMTP is configured.

The mail goes through Airflow's own notifier, ``SmtpNotifier`` (the SMTP provider), with the SMTP
connection ``DBT_PLATFORM_SMTP_CONN_ID`` (``smtp_default``): host, port, login, and its extras
(``from_email``, ``disable_ssl``, ``disable_tls``, ``timeout``, ``retry_limit``) as the provider
documents them. Without that connection nothing is mailed; the local record
(``<state>/notifications/<name>.json``) is written either way, for development and as the
platform's own trace of what it told whom.

A failure to mail is raised as it comes (``smtplib``'s exceptions, a refused connection), so the
saga classifies it: a 4xx reply or a dropped connection is retried by Airflow, a 5xx is permanent.
The hook also retries a refused send within one session ``retry_limit`` times (5 by default);
the saga's own retries make that unnecessary, so set ``"retry_limit": 0`` on the connection.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from airflow.sdk import BaseNotifier

from include.dbt_platform.boundaries import boundary

DEFAULT_FROM = "dbt-platform@localhost"


def _smtp_connection(conn_id: str):
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception:  # not configured: record only
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


def deliver(record_dir: Path, name: str, *, to: str, subject: str, body: str, smtp_conn_id: str) -> dict:
    record = {"to": to, "subject": subject, "body": body, "at": time.time(), "emailed": False}
    record["emailed"] = email(to=to, subject=subject, body=body, smtp_conn_id=smtp_conn_id)
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
