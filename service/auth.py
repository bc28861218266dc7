"""API keys and tenants.

Keys are configured per tenant (TUMORTRACK_API_KEYS=tenant=key,...) and sent
as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. With no keys
configured the service runs open: every request belongs to tenant "default"
and the gateway logs a warning at start.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.dependencies import Context
from service.errors import ApiError

OPEN_TENANT = "default"

_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token.")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key.")


def current_tenant(
    context: Context,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
    header_key: Annotated[str | None, Security(_api_key_header)] = None,
) -> str:
    tenants = context.settings.api_key_tenants()
    if not tenants:
        return OPEN_TENANT

    presented = header_key or (bearer.credentials if bearer else None)
    if not presented:
        raise ApiError(401, "missing_api_key", "An API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.", headers={"WWW-Authenticate": "Bearer"})

    # Compare against every key so the time taken does not reveal which prefix matched.
    tenant = None
    for key, owner in tenants.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            tenant = owner
    if tenant is None:
        raise ApiError(401, "invalid_api_key", "The API key is not valid.", headers={"WWW-Authenticate": "Bearer"})
    return tenant


Tenant = Annotated[str, Depends(current_tenant)]
