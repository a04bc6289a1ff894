-- Run once by the postgres image on first start (docker-entrypoint-initdb.d).
-- The Airflow metadata database is created by POSTGRES_DB; these hold dbt output and the saga journal.
CREATE DATABASE warehouse;
CREATE DATABASE platform;
