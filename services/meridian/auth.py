"""Who the caller is: user bearer tokens and the operator credential.

User tokens are JWTs (RFC 7519, through PyJWT) so that a standard identity provider can replace the
built-in issuer by configuration:

- **Built-in** (default): ``POST /v1/users`` answers with a token for the new user, HS256-signed with the
  user-token key ring (:mod:`meridian.keys`), the key id in the JWT header (``kid``), ``sub`` the user
  id, ``iss`` ``meridian/<project>-<stack>``, ``aud`` ``meridian``, ``exp`` one day later;
  ``POST /v1/users/{id}/token`` exchanges a valid token for a fresh one. Every region holds the ring
  (the replicated secret), so any region verifies a token without calling another.
- **An OIDC issuer** (a Cognito user pool, Auth0, Okta, ...): set ``MERIDIAN_OIDC_ISSUER`` (the ``iss``
  of its tokens), ``MERIDIAN_OIDC_JWKS_URL`` (its public keys; for Cognito
  ``https://cognito-idp.<region>.amazonaws.com/<pool id>/.well-known/jwks.json``),
  ``MERIDIAN_OIDC_AUDIENCE`` (the app client id) and ``MERIDIAN_OIDC_USER_CLAIM`` (the claim holding
  the Meridian user id, e.g. ``custom:meridian_user_id``). Tokens of that issuer are verified with its
  RS256/ES256 keys (fetched once, cached, refetched for an unknown ``kid``); built-in tokens stay
  accepted unless ``MERIDIAN_BUILTIN_TOKENS=0``. docs/service.md shows the Cognito set-up.

The operator credential (``PUT /v1/stock/...``) is a bearer secret from the stack's secret, compared in
constant time against each entry of its ring.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

import jwt

from meridian.keys import KeyRing

__all__ = ["AUDIENCE", "AuthError", "OidcIssuer", "UserTokens", "bearer", "operator_matches"]

AUDIENCE = "meridian"
TTL_SECONDS = 24 * 3600
_ALGORITHMS = ["RS256", "ES256"]


class AuthError(ValueError):
    """The caller's credential cannot be trusted (401)."""


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        raise AuthError("send Authorization: Bearer <token> (the token is in the body of POST /v1/users)")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return token.strip()


@dataclass(frozen=True)
class OidcIssuer:
    issuer: str
    jwks_url: str
    audience: str
    user_claim: str = "sub"


class UserTokens:
    def __init__(self, ring: KeyRing, *, issuer: str, ttl: int = TTL_SECONDS, oidc: OidcIssuer | None = None,
                 builtin: bool = True) -> None:
        self.ring, self.issuer, self.ttl, self.oidc, self.builtin = ring, issuer, ttl, oidc, builtin
        self._jwks = jwt.PyJWKClient(oidc.jwks_url, cache_keys=True, lifespan=3600) if oidc else None

    def issue(self, user_id: str, *, now: float | None = None) -> str:
        iat = int(time.time() if now is None else now)
        claims = {"sub": user_id, "iss": self.issuer, "aud": AUDIENCE, "iat": iat, "exp": iat + self.ttl}
        return jwt.encode(claims, self.ring.signing_key, algorithm="HS256", headers={"kid": self.ring.current})

    def verify(self, token: str) -> str:
        """The user id the token speaks for, or :class:`AuthError` (expired, forged, another issuer...)."""
        try:
            header = jwt.get_unverified_header(token)
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise AuthError("bearer token is not a JWT") from None
        try:
            if self.oidc is not None and issuer == self.oidc.issuer:
                assert self._jwks is not None
                key = self._jwks.get_signing_key_from_jwt(token).key
                claims = jwt.decode(token, key, algorithms=_ALGORITHMS, audience=self.oidc.audience,
                                    issuer=self.oidc.issuer, options={"require": ["exp", "iss"]})
                user = claims.get(self.oidc.user_claim)
                if not isinstance(user, str) or not user:
                    raise AuthError(f"token has no {self.oidc.user_claim!r} claim naming the Meridian user")
                return user
            if not self.builtin:
                raise AuthError("bearer token is not from the configured identity provider")
            if header.get("alg") != "HS256":
                raise AuthError("bearer token algorithm is not accepted")
            key = self.ring.get(str(header.get("kid", "")))
            if key is None:
                raise AuthError("bearer token was signed with a key that is no longer accepted; get a new token")
            claims = jwt.decode(token, key, algorithms=["HS256"], audience=AUDIENCE, issuer=self.issuer,
                                options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("bearer token has expired; exchange it at POST /v1/users/{id}/token before it does") from None
        except jwt.PyJWKClientError as exc:
            raise AuthError(f"identity provider keys unavailable: {exc}") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"bearer token refused: {exc}") from None
        return str(claims["sub"])


def operator_matches(presented: str, ring: KeyRing) -> bool:
    """True when ``presented`` is one of the operator ring's secrets (constant time for each)."""
    ok = False
    for _, secret in ring.keys:
        ok |= hmac.compare_digest(presented.encode(), secret)
    return ok
