"""Who may act: a request carrying the configured token, as ``Authorization: Bearer <token>``
or in the cookie the login form sets. Compared in constant time; never logged or shown."""

from __future__ import annotations

import hashlib
import hmac
import re

from pydantic import SecretStr
from starlette.requests import Request

COOKIE = "unembargo_web"
# Who signed in (as they said at sign-in) or ``X-Operator`` of a scripted call: for the log only.
OPERATOR_COOKIE = "unembargo_web_operator"
OPERATOR_HEADER = "x-operator"
_OPERATOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@\-]{0,63}$")


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


def operator_name(text: str | None) -> str | None:
    """``text`` if it is a plain name (letters, digits, ``._@-``), else None: it goes into logs."""
    return text if text and _OPERATOR.match(text) else None


def who(request: Request) -> str:
    """Who acted, for the log: the name they gave, if any, and the client's address (the token
    is the same for everyone, so it cannot say)."""
    client = request.client
    where = f"{client.host}:{client.port}" if client else "unknown"
    name = operator_name(request.headers.get(OPERATOR_HEADER) or request.cookies.get(OPERATOR_COOKIE))
    return f"{name} ({where})" if name else where
