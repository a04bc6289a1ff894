"""The project-creation request: parsed once, strictly, into a ProjectRequest (no database needed)."""

from __future__ import annotations

import pytest

from include.dbt_platform.errors import RequestInvalid
from include.dbt_platform.project_creation.request import MAX_NAME, ProjectRequest, parse_request
from tests.saga_requests import BAD_REQUESTS, request


def test_validation_rejects_what_the_form_schema_lets_through():
    for override, message in BAD_REQUESTS[:-1]:
        with pytest.raises(RequestInvalid, match=message):
            parse_request({**request("bad_req"), **override})


def test_a_valid_request_becomes_a_typed_request_with_every_derived_name():
    req = parse_request(request("sales", environments=["prod", "dev", "prod"], readers=["analysts"]))
    assert isinstance(req, ProjectRequest)
    assert req.environments == ("dev", "prod"), "canonical order, no duplicates"
    assert (req.database_mode, req.database_name) == ("new", "dbt_sales")
    assert [req.schema(e) for e in req.environments] == ["sales_dev", "sales_prod"]
    assert [req.login_role(e) for e in req.environments] == ["sales_dev_rw", "sales_prod_rw"]
    assert [req.conn_id(e) for e in req.environments] == ["dbt_sales_dev", "dbt_sales_prod"]
    assert (req.owner_role, req.reader_role, req.readers) == ("sales_owner", "sales_reader", ("analysts",))


def test_every_derived_postgres_name_fits_63_bytes_at_the_longest_name():
    req = parse_request(request("a" * MAX_NAME))
    names = [req.database_name, req.owner_role, req.reader_role]
    for env in req.environments:
        names += [req.schema(env), req.login_role(env), req.conn_id(env)]
    assert max(len(n.encode()) for n in names) <= 63


def test_existing_mode_names_its_database_and_keys_are_checked():
    req = parse_request(request("sales", database_mode="existing", database_name="analytics"))
    assert (req.database_mode, req.database_name) == ("existing", "analytics")
    with pytest.raises(RequestInvalid, match="database_name is required"):
        parse_request(request("sales", database_mode="existing", database_name=None))
    with pytest.raises(RequestInvalid, match="idempotency_key"):
        parse_request(request("sales", idempotency_key="has space"))
    assert parse_request(request("sales", idempotency_key="ticket-42:v1")).idempotency_key == "ticket-42:v1"
