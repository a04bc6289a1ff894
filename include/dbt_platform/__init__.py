"""dbt platform on Airflow: configuration, the Cosmos DAG factory and the project-creation saga."""
