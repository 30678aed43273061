"""Who is calling, and may they: API keys (`X-API-Key`) and JWTs (`Authorization: Bearer`), with scopes.

Keys are known only by their SHA-256; a presented key is hashed and compared with every known hash in
constant time. Neither keys nor tokens are ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from service.settings import ApiKeySpec, JwtSettings

ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    id: str  # API key id or JWT subject: the actor recorded on events
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes


class AuthError(Exception):
    """No credentials, or credentials that do not check out (401)."""


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, api_keys: Iterable[ApiKeySpec], jwt_settings: JwtSettings | None = None) -> None:
        self._keys = tuple((bytes.fromhex(k.sha256), k) for k in api_keys)
        self._jwt = jwt_settings

    def authenticate(self, api_key: str | None, authorization: str | None) -> Principal:
        if api_key:
            return self._by_key(api_key)
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("Authorization must be 'Bearer <token>'")
            return self._by_jwt(token.strip())
        raise AuthError("Missing credentials: send X-API-Key or Authorization: Bearer <JWT>")

    def _by_key(self, api_key: str) -> Principal:
        presented = hashlib.sha256(api_key.encode()).digest()
        found: ApiKeySpec | None = None
        for digest, spec in self._keys:  # no early exit: the time taken does not depend on which key
            if hmac.compare_digest(digest, presented):
                found = spec
        if found is None:
            raise AuthError("Invalid API key")
        return Principal(id=f"key:{found.id}", scopes=found.scopes)

    def _by_jwt(self, token: str) -> Principal:
        if self._jwt is None:
            raise AuthError("Bearer tokens are not accepted by this server")
        settings = self._jwt
        try:
            claims = jwt.decode(
                token,
                settings.key,
                algorithms=list(settings.algorithms),
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={"verify_aud": settings.audience is not None},
            )
        except jwt.PyJWTError as e:
            raise AuthError(f"Invalid token: {e}") from None
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise AuthError("Invalid token: the 'scope' claim must be a space-separated string")
        subject = claims.get("sub")
        return Principal(id=f"jwt:{subject}" if subject else "jwt", scopes=frozenset(scope.split()))
