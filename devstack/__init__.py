"""The local stack on one machine, for development, tests and benchmarks (never imported by include/).

    python -m devstack up      # PostgreSQL, OpenBao, the git server, Airflow; waits for health
    python -m devstack demo    # trigger inventory_transforms and create a project via REST, wait
    python -m devstack down    # stop everything
    python -m devstack status  # what runs, and how to connect

PostgreSQL keeps its data under ``.local/pg`` and runs as an unprivileged OS user (``initdb``
refuses root). OpenBao (``.local/openbao``) holds every connection; the git server
(``.local/git``) every project's repository and the registered-projects DAG bundle. Airflow runs
api-server, scheduler, dag-processor and triggerer with the LocalExecutor, everything bound to
127.0.0.1. Passwords are generated on first start into ``.local/secrets`` (mode 0600) unless given
through the environment; nothing secret is committed.

    settings.py         where the stack keeps its files, its ports, its generated secrets
    postgres.py         the local PostgreSQL cluster
    openbao.py          the secrets manager: started, initialised, unsealed; mounts, policies, tokens
    git_server.py       the git server (smart HTTP + a repository API), git_repositories.py its disk
    shared_state.py     how Airflow reads OpenBao and the bundle; the platform's own connections
    migrate.py          moves an older stack's files under .local/state/ to those services
    services.py         starting and stopping a background server by its pidfile
    airflow.py          Airflow's environment, components, health
    client.py    a small REST API client
    demo.py      what ``make run`` shows
    bench/       the benchmarks (``make bench``)
"""
