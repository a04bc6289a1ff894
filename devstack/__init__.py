"""The local stack on one machine, for development, tests and benchmarks (never imported by include/).

    python -m devstack up      # PostgreSQL + Airflow, waits for health
    python -m devstack demo    # trigger inventory_transforms and create a project via REST, wait
    python -m devstack down    # stop everything
    python -m devstack status  # what runs, and how to connect

PostgreSQL keeps its data under ``.local/pg`` and runs as an unprivileged OS user (``initdb``
refuses root). Airflow runs api-server, scheduler, dag-processor and triggerer with the
LocalExecutor, everything bound to 127.0.0.1. Passwords are generated on first start into
``.local/secrets`` (mode 0600) unless given through the environment; nothing secret is committed.

    settings.py  where the stack keeps its files, its ports, its generated secrets
    postgres.py  the local PostgreSQL cluster
    airflow.py   Airflow's environment, components, health
    client.py    a small REST API client
    demo.py      what ``make run`` shows
    bench/       the benchmarks (``make bench``)
"""
