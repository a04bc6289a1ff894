"""The ``dbt_project_create`` saga: a request creates everything a new dbt project needs.

    request.py     the request: its DAG params (the UI trigger form) and its parsing into ProjectRequest
    validation.py  the first step: is the request allowed, is everything it names free (no effects)
    steps.py       each other step and its compensation, calling adapters only (no SQL here)
    definition.py  the saga declared in one place: steps in order, each with its retry and timeout

It imports the saga machinery, the adapters, ``transformations`` (to register the new project's DAG),
``config`` and ``errors``.
"""
