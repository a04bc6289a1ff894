#!/usr/bin/env bash
# Run once by the postgres image on first start (docker-entrypoint-initdb.d), as the superuser, which
# is used for nothing else: the stack's least-privilege roles, their databases, nothing open to PUBLIC.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v airflow_pw="$AIRFLOW_DB_PASSWORD" -v platform_pw="$PLATFORM_DB_PASSWORD" \
  -v warehouse_pw="$WAREHOUSE_DB_PASSWORD" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE ROLE dbt_platform LOGIN CREATEDB CREATEROLE PASSWORD :'platform_pw';
GRANT pg_signal_backend TO dbt_platform;  -- to end a project's sessions when dropping it
CREATE ROLE warehouse LOGIN PASSWORD :'warehouse_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE DATABASE platform OWNER dbt_platform;
CREATE DATABASE warehouse OWNER warehouse;
REVOKE CONNECT, TEMPORARY ON DATABASE airflow, platform, warehouse, postgres, template1 FROM PUBLIC;
SQL
