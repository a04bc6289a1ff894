"""What ``inventory_marts_report`` computes from the refreshed marts."""

from __future__ import annotations

import logging

import psycopg2
from psycopg2 import sql

from include.dbt_platform.adapters.postgres import connection_params

log = logging.getLogger(__name__)


def summarize_marts(conn_id: str, schema: str) -> dict:
    with psycopg2.connect(**connection_params(conn_id)) as pg, pg.cursor() as cur:
        cur.execute(
            sql.SQL("select department, count(*) from {}.fct_users group by 1 order by 1").format(
                sql.Identifier(schema)
            )
        )
        users = dict(cur.fetchall())
        cur.execute(
            sql.SQL("select criticality, count(*) from {}.fct_applications group by 1 order by 1").format(
                sql.Identifier(schema)
            )
        )
        applications = dict(cur.fetchall())
    pg.close()
    summary = {"users_per_department": users, "applications_per_criticality": applications}
    log.info("inventory marts: %s", summary)
    return summary
