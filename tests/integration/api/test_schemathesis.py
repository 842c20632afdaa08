"""Property tests of the live API against its own OpenAPI schema: no input may produce a 5xx.

Every operation gets a bounded number of generated requests, sent over HTTP as an admin (so that
they pass auth and reach the handlers) to a server with one registered pipeline and one run.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from .conftest import Api, bearer, make_token

pytestmark = pytest.mark.slow  # 25 generated requests for each of the ~17 operations


@pytest.fixture
def api_schema(api: Api) -> schemathesis.BaseSchema:
    definition = {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": "demo"},
        "spec": {"tasks": [{"id": "a", "type": "python", "callable": f"{api.module}:maybe_fail"}]},
    }
    api.store.register_pipeline("demo", definition)
    api.store.create_run(
        run_id="run-1",
        pipeline="demo",
        pipeline_version=1,
        task_ids=["a"],
        params={},
        logical_date=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json")


def test_no_request_makes_the_server_fail(api_schema: schemathesis.BaseSchema) -> None:
    # schemathesis' pytest plugin (from_fixture) does not run under this pytest; drive Hypothesis directly
    headers = bearer(make_token("admin", sub="fuzzer", ttl=3600))
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers=headers, timeout=30)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, report them all
            failures.append(f"{operation.label}: {str(exc).strip().splitlines()[0]}")
    assert operations >= 15
    assert not failures, "\n".join(failures)
