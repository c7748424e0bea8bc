"""Bearer tokens: ``API_TOKENS`` (comma-separated, a secret), compared in constant time.

A token is never logged; a client is named by its token's position ("token-0"), which is
what rate limits and logs use.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from training_api.errors import ApiError

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="training-agent"'}


class Authenticator:
    def __init__(self, tokens: list[SecretStr], *, allow_anonymous: bool = False) -> None:
        self._tokens = [token.get_secret_value().encode() for token in tokens]
        self.allow_anonymous = allow_anonymous and not self._tokens

    def client_of(self, authorization: str | None) -> str | None:
        """The caller's name, ``None`` when anonymous access is allowed; else 401."""
        if self.allow_anonymous:
            return None
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(401, "unauthorized", "a bearer token is required", _CHALLENGE)
        candidate = presented.strip().encode()
        # Compare with every token, so timing tells nothing about which (or whether one) matched.
        matches = [hmac.compare_digest(candidate, token) for token in self._tokens]
        if not any(matches):
            raise ApiError(401, "unauthorized", "the bearer token is not valid", _CHALLENGE)
        return f"token-{matches.index(True)}"
