"""The JSON API under generated requests (schemathesis, from the OpenAPI description the app serves).

Every generated request gets an answer the description documents (status, content type, headers, body
schema), never a 500. Actions run against a real case, so they reach the handlers behind the validation.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from tests.integration.ui_support import make_case, make_user, token_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


OPERATIONS = [
    ("GET", "/api/v1/cases"),
    ("GET", "/api/v1/cases/{reference}"),
    ("POST", "/api/v1/cases/{reference}/{action}"),
]


@pytest.fixture
def lead_token(factory: Any) -> str:
    make_user(factory, "fuzz@example.test", "lead")
    return token_for(factory, "fuzz@example.test")


def test_every_operation_of_the_description_is_fuzzed(app: Any) -> None:
    served = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = {(result.ok().method.upper(), result.ok().path) for result in served.get_all_operations()}
    assert operations == set(OPERATIONS)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_generated_requests_get_documented_answers(
    app: Any, factory: Any, lead_token: str, method: str, path: str, mode: GenerationMode
) -> None:
    """Positive: requests the description allows. Negative: requests it forbids. Both: documented
    answers only, never a 500."""
    operation = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)[path][method]
    reference = make_case(factory)
    headers = {"Authorization": f"Bearer {lead_token}"}
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    def answers(case: Any) -> None:
        if mode is GenerationMode.POSITIVE and case.path_parameters and "reference" in case.path_parameters:
            case.path_parameters["reference"] = reference  # reach the handlers, not only the 404
        # Not required: "schema-valid data is accepted" (a filter value JSON Schema cannot describe, such
        # as an address, may be schema-valid and still get the documented 400) and "schema-violating
        # data is refused" (unknown query parameters are ignored, as most APIs do).
        response = case.call_and_validate(
            headers=headers, excluded_checks=[positive_data_acceptance, negative_data_rejection]
        )
        statuses[response.status_code] += 1

    answers()
    assert not any(status >= 500 for status in statuses)
    if mode is GenerationMode.POSITIVE:
        assert any(200 <= status < 300 for status in statuses), statuses  # some reached the handler
    else:  # what the description forbids reached the validation: some of it was refused
        assert any(400 <= status < 500 for status in statuses), statuses
