"""Property-based API test: schemathesis sends requests generated from
openapi/openapi.json to the live gateway and checks that none gets a 5xx and
every response matches the schema.

Positive-data acceptance is excluded: schemathesis fills binary image fields
with arbitrary bytes, which the service must reject as unreadable images.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from ops.export_openapi import OPENAPI_PATH

pytestmark = pytest.mark.integration

schema = schemathesis.openapi.from_path(str(OPENAPI_PATH))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_schema(case, stack):
    case.call_and_validate(base_url=stack.base_url, excluded_checks=[positive_data_acceptance])
