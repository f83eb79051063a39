#!/bin/bash
# First start of the compose Postgres: one role and database each for Airflow and MLflow, with the
# passwords docker/gen-env.sh generated (passed in as environment variables, never stored here).
set -euo pipefail
: "${AIRFLOW_DB_PASSWORD:?run docker/gen-env.sh}" "${MLFLOW_DB_PASSWORD:?run docker/gen-env.sh}"
psql --set ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     --set airflow_password="$AIRFLOW_DB_PASSWORD" --set mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
SQL
