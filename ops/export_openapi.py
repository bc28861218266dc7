"""Write openapi/openapi.json from the app; a test fails when the committed file is stale."""

from __future__ import annotations

import json
import sys

from ops.stack import REPO_ROOT

OPENAPI_PATH = REPO_ROOT / "openapi" / "openapi.json"


def render_openapi() -> str:
    from service.main import create_app

    return json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OPENAPI_PATH.parent.mkdir(exist_ok=True)
    OPENAPI_PATH.write_text(render_openapi())
    print(f"wrote {OPENAPI_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
