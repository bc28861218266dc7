from ops.export_openapi import OPENAPI_PATH, render_openapi


def test_committed_openapi_is_current():
    assert OPENAPI_PATH.exists(), "openapi/openapi.json is missing; run `make openapi`"
    assert OPENAPI_PATH.read_text() == render_openapi(), "openapi/openapi.json is stale; run `make openapi` and commit it"


def test_operation_ids_are_stable():
    import json

    operations = {op["operationId"] for path in json.loads(render_openapi())["paths"].values() for op in path.values()}

    assert {"create_segmentation", "get_job", "get_artifact", "delete_job", "list_engines", "healthz", "readyz"} <= operations
