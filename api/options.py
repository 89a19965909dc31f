"""The API's settings, and the checks every API request passes first: key and body size."""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from fastapi import Request

from api.errors import ApiError
from language.sampling import SamplingSettings


@dataclass(frozen=True)
class ApiOptions:
    defaults: SamplingSettings = SamplingSettings()  # for whatever a request leaves out
    api_key: str | None = None  # Bearer key that /v1 and POST / require, if set
    closed: bool = False  # no key while the page needs a login: the API would bypass it, so it is shut
    allow_image_urls: bool = False  # fetch http(s) image URLs (off: data URIs only)
    max_body_mb: int = 30


def check_key(request: Request, options: ApiOptions) -> None:
    if options.closed:
        raise ApiError(401, "The page of this server needs a login and no API key was set, so the API is "
                            "closed: start the server with --api-key KEY to open it.", code="api_closed")
    if options.api_key is None:
        return
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip().encode(), options.api_key.encode()):
        raise ApiError(401, "A valid API key is required: send the header 'Authorization: Bearer <key>'.",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, options: ApiOptions) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (not after reading it all)."""
    limit = options.max_body_mb * 2**20
    too_large = ApiError(413, f"The request is over {options.max_body_mb} MB.", code="request_too_large")
    if int(request.headers.get("content-length") or 0) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)
