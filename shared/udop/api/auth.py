"""Who is calling and what they may do: JWT bearer tokens, API keys, and three ordered roles.

* HS256 tokens are verified with ``UDOP_JWT_SECRET`` (tokens a team issues itself);
* RS256/ES256 tokens are verified against the keys at ``UDOP_JWKS_URL`` (Cognito or any OIDC issuer);
* API keys (``X-API-Key: udop_...`` or ``Authorization: Bearer udop_...``) belong to service accounts.

Roles are ordered ``viewer < operator < admin``; an endpoint names the least role it needs.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import jwt

from udop.api.keys import ApiKeys, looks_like_api_key
from udop.api.settings import ApiSettings

__all__ = ["AuthError", "Authenticator", "Principal", "Role"]


class Role(IntEnum):
    NONE = 0  # authenticated, but no udop role granted
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            role = cls[value.strip().upper()]
        except KeyError:
            return cls.NONE
        return role


ROLE_NAMES = ("viewer", "operator", "admin")


@dataclass(frozen=True)
class Principal:
    subject: str  # the token's "sub" or "apikey:<id>"
    role: Role
    kind: str  # "jwt" | "api_key"


class AuthError(Exception):
    """401 (who are you?) or 403 (not allowed); ``reason`` is safe to show the caller."""

    def __init__(self, status: int, reason: str, principal: Principal | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.principal = principal
        #: who the refused credentials claimed to be (unverified): for the audit log only
        self.claimed: str | None = None


#: verified credentials remembered at once; only valid credentials are kept, so this bounds the memory a
#: caller holding many valid tokens can take, not what a guesser can
_CACHE_SIZE = 10_000


class Authenticator:
    """Verifies credentials, and remembers each verified one so that a client's next calls cost a lookup.

    A JWT is remembered until its ``exp`` (its claims cannot change; with a JWKS issuer also at most
    ``auth_cache_seconds``, as the issuer may withdraw a key), an API key for ``auth_cache_seconds``: a
    key revoked through this server is forgotten at once, one revoked elsewhere (another instance, the
    CLI) stops working here within that delay. Failures are never remembered.
    """

    _ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")

    def __init__(self, settings: ApiSettings, keys: ApiKeys) -> None:
        self.settings = settings
        self.keys = keys
        # keyed by a hash of the credential: the cache holds no secret a memory dump would show
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._cache_lock = threading.Lock()
        keys.on_revoke(self.forget_api_key)
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        # PyJWKClient caches the key set and refetches it when a token names an unknown "kid".
        # The cooldown stops a flood of tokens with made-up "kid"s from hammering the issuer.
        self._jwks = (
            jwt.PyJWKClient(
                settings.jwks_url,
                cache_keys=True,
                lifespan=300,
                timeout=5,
                cooldown_duration=settings.jwks_refresh_cooldown,
            )
            if settings.jwks_url
            else None
        )

    @staticmethod
    def _cache_key(authorization: str | None, api_key: str | None) -> bytes:
        if api_key:
            return b"k" + hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).digest()
        return b"a" + hashlib.sha256((authorization or "").encode("utf-8", "surrogatepass")).digest()

    def cached(self, authorization: str | None, api_key: str | None) -> Principal | None:
        """The principal of credentials verified before and still remembered; None otherwise. No I/O."""
        if self.settings.auth_cache_seconds <= 0 or not (authorization or api_key):
            return None
        key = self._cache_key(authorization, api_key)
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[1] <= time.time():
            with self._cache_lock:
                self._cache.pop(key, None)
            return None
        return entry[0]

    def _remember(
        self, authorization: str | None, api_key: str | None, principal: Principal, until: float
    ) -> None:
        if self.settings.auth_cache_seconds <= 0 or until <= time.time():
            return
        key = self._cache_key(authorization, api_key)
        with self._cache_lock:
            self._cache[key] = (principal, until)
            self._cache.move_to_end(key)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def forget_api_key(self, key_id: str) -> None:
        """Drop every remembered use of the API key ``key_id`` (called when it is revoked here)."""
        subject = f"apikey:{key_id}"
        with self._cache_lock:
            for key in [k for k, (p, _) in self._cache.items() if p.subject == subject]:
                del self._cache[key]

    def authenticate(self, authorization: str | None, api_key: str | None) -> Principal:
        """Verify the credentials (from the cache when remembered); ``AuthError`` when refused."""
        principal = self.cached(authorization, api_key)
        if principal is not None:
            return principal
        principal, until = self._verify(authorization, api_key)
        self._remember(authorization, api_key, principal, until)
        return principal

    def _verify(self, authorization: str | None, api_key: str | None) -> tuple[Principal, float]:
        """The principal and until when (epoch seconds) it may be remembered."""
        keep = time.time() + self.settings.auth_cache_seconds
        if api_key:
            return self._from_api_key(api_key), keep
        if not authorization:
            raise AuthError(401, "no credentials: send 'Authorization: Bearer <token>' or 'X-API-Key'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "the Authorization header must read 'Bearer <token>'")
        if looks_like_api_key(token):
            return self._from_api_key(token), keep
        try:
            principal, claims, asymmetric = self._from_jwt(token)
        except AuthError as exc:
            exc.claimed = _claimed_subject(token)
            raise
        exp = claims["exp"]
        # PyJWT also accepts an integer written as a string; anything odd is simply not remembered
        until = float(exp) if isinstance(exp, int | float) else 0.0
        return principal, min(until, keep) if asymmetric else until

    def _from_api_key(self, key: str) -> Principal:
        record = self.keys.verify(key.strip())
        if record is None:
            error = AuthError(401, "invalid or revoked API key")
            parts = key.strip().split("_")
            if len(parts) >= 3 and len(parts[1]) == 12:
                error.claimed = f"apikey:{parts[1][:12]}"
            raise error
        return Principal(subject=f"apikey:{record.id}", role=Role.parse(record.role), kind="api_key")

    def _from_jwt(self, token: str) -> tuple[Principal, dict[str, Any], bool]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError(401, "malformed bearer token") from None
        alg = header.get("alg")
        settings = self.settings
        # issuer and audience bind a token to this deployment whatever signed it: an HS256 token minted
        # for another service sharing the secret must not pass here
        required = ["exp", "sub"]
        if settings.jwt_max_lifetime:
            required.append("iat")  # without "iat" a lifetime cannot be bounded
        options: dict[str, Any] = {"require": required, "verify_aud": settings.jwt_audience is not None}
        kwargs: dict[str, Any] = {
            "issuer": settings.jwt_issuer,
            "audience": settings.jwt_audience,
            "options": options,
            "leeway": settings.jwt_leeway,
        }
        try:
            if alg == "HS256" and self._secret is not None:
                claims = jwt.decode(token, self._secret, algorithms=["HS256"], **kwargs)
            elif alg in self._ASYMMETRIC and self._jwks is not None:
                try:
                    signing_key = self._jwks.get_signing_key_from_jwt(token)
                except jwt.PyJWKClientConnectionError:
                    raise AuthError(503, "the token issuer's key set (JWKS) cannot be fetched") from None
                except jwt.PyJWKClientError:
                    raise AuthError(401, "the token's signing key is not in the issuer's key set") from None
                claims = jwt.decode(token, signing_key.key, algorithms=[alg], **kwargs)
            else:
                raise AuthError(401, f"tokens signed with {alg!r} are not accepted here")
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "the token has expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError(401, "the token's signature is invalid") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(401, f"invalid token: {exc}") from None
        self._check_lifetime(claims)
        principal = Principal(subject=str(claims["sub"]), role=self._role(claims), kind="jwt")
        return principal, claims, alg != "HS256"

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        """A stolen long-lived token is a standing key: refuse tokens minted to live too long."""
        limit = self.settings.jwt_max_lifetime
        if not limit:
            return
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise AuthError(401, "invalid token: 'exp' and 'iat' must be numbers")
        if exp - iat > limit:
            raise AuthError(
                401, f"the token lives {int(exp - iat)} s; this server accepts tokens of at most {limit} s"
            )
        # an "iat" in the future would stretch the window past the limit
        if iat > time.time() + self.settings.jwt_leeway:
            raise AuthError(401, "invalid token: it was issued in the future ('iat')")

    def _role(self, claims: dict[str, Any]) -> Role:
        found = Role.NONE
        for claim in (self.settings.jwt_role_claim, "cognito:groups"):
            value = claims.get(claim)
            values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
            for item in values:
                if isinstance(item, str):
                    found = max(found, Role.parse(item.removeprefix("udop-")))
        return found


def _claimed_subject(token: str) -> str | None:
    """The ``sub`` a refused token claims, unverified; None when it has none."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    sub = claims.get("sub")
    return str(sub)[:100] if sub is not None else None


def require(principal: Principal, role: Role) -> None:
    if principal.role < role:
        have = principal.role.label if principal.role else "no role"
        raise AuthError(403, f"this needs the {role.label} role; the caller has {have}", principal)
