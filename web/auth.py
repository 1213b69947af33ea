"""Who may act: a request carrying the configured token, as ``Authorization: Bearer <token>``
or in the cookie the login form sets. Compared in constant time; never logged or shown."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr
from starlette.requests import Request

COOKIE = "unembargo_web"


def cookie_value(token: SecretStr) -> str:
    """What the login cookie holds: a digest of the token, not the token itself."""
    return hashlib.sha256(b"unembargo-web-session:" + token.get_secret_value().encode()).hexdigest()


def authorized(request: Request, token: SecretStr | None) -> bool:
    """Whether the request proves it holds ``token`` (never, when no token is configured)."""
    if token is None or not token.get_secret_value():
        return False
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and given:
        return hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and hmac.compare_digest(cookie.encode(), cookie_value(token).encode())


def who(request: Request) -> str:
    """Who acted, for the log: the client's address (the token is the same for everyone)."""
    client = request.client
    return f"{client.host}:{client.port}" if client else "unknown"
