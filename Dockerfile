# Image for docker-compose.yaml: Airflow 3.3 with Cosmos, dbt and this project's helpers.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt constraints.txt /tmp/
RUN pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/constraints.txt
ENV PYTHONPATH=/opt/airflow \
    AIRFLOW__COSMOS__ENABLE_TELEMETRY=False \
    DO_NOT_TRACK=true \
    SCARF_ANALYTICS=false \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false
