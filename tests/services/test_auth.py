"""Who may call what: user bearer tokens, key rings and rotation, signed region-to-region calls.

Each test reproduces an attack from the security review and asserts what it gets now."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from test_api import KEYS, Cluster, new_user

from meridian.auth import AuthError, OidcIssuer, UserTokens, bearer, operator_matches
from meridian.keys import KeyRing, KeyRingError
from meridian.peers import MAX_FUTURE_SECONDS, NonceCache, PeerAuthError, sign_request, verify_request

ISSUER = "meridian/meridian-api"


class TestKeyRing:
    def test_plain_secret_is_a_ring_of_one_with_a_derived_id(self) -> None:
        ring = KeyRing.parse("x" * 40)
        assert ring.current.startswith("k") and len(ring.current) == 9 and ring.get(ring.current) == b"x" * 40

    def test_current_first_previous_accepted(self) -> None:
        ring = KeyRing.parse(f"new={'n' * 32} old={'o' * 32}")
        assert ring.current == "new" and ring.signing_key == b"n" * 32 and ring.get("old") == b"o" * 32

    def test_rotation_keeps_one_previous_and_drops_older(self) -> None:
        ring = KeyRing.parse(f"b={'b' * 32} a={'a' * 32}").rotated("c", "c" * 32)
        assert ring.encode() == f"c={'c' * 32} b={'b' * 32}"

    @pytest.mark.parametrize(("text", "why"), [("", "empty"), ("short", "at least 32"), ("bad kid=" + "x" * 32, "kid=secret"),
                                               (f"a={'x' * 32} a={'y' * 32}", "repeat")])
    def test_bad_rings_say_what_to_fix(self, text: str, why: str) -> None:
        with pytest.raises(KeyRingError, match=why):
            KeyRing.parse(text)


class TestUserTokens:
    def tokens(self, ring: KeyRing = KEYS["user"]) -> UserTokens:
        return UserTokens(ring, issuer=ISSUER)

    def test_round_trip_carries_the_key_id(self) -> None:
        token = self.tokens().issue("usr_1")
        assert jwt.get_unverified_header(token)["kid"] == "user-1"
        assert self.tokens().verify(token) == "usr_1"

    def test_expired_forged_and_foreign_tokens_are_refused(self) -> None:
        with pytest.raises(AuthError, match="expired"):
            self.tokens().verify(self.tokens().issue("usr_1", now=time.time() - 2 * 86400))
        forged = UserTokens(KeyRing.single(b"z" * 32, kid="user-1"), issuer=ISSUER).issue("usr_1")
        with pytest.raises(AuthError, match="Signature"):
            self.tokens().verify(forged)
        other_stack = UserTokens(KEYS["user"], issuer="meridian/other-stack").issue("usr_1")
        with pytest.raises(AuthError, match="issuer"):
            self.tokens().verify(other_stack)
        unsigned = jwt.encode({"sub": "usr_1", "iss": ISSUER, "aud": "meridian", "iat": 1, "exp": 2**40}, None, algorithm="none")
        with pytest.raises(AuthError, match="algorithm"):
            self.tokens().verify(unsigned)
        with pytest.raises(AuthError, match="not a JWT"):
            self.tokens().verify("garbage")

    def test_rotation_accepts_previous_then_drops_it(self) -> None:
        before = self.tokens().issue("usr_1")
        rotated = KEYS["user"].rotated("user-2", "u2" * 16)
        assert self.tokens(rotated).verify(before) == "usr_1"  # sessions survive the rotation
        assert jwt.get_unverified_header(self.tokens(rotated).issue("usr_1"))["kid"] == "user-2"
        dropped = rotated.rotated("user-3", "u3" * 16)  # keeps user-2 only
        with pytest.raises(AuthError, match="no longer accepted"):
            self.tokens(dropped).verify(before)

    @pytest.fixture
    def jwks(self) -> Iterator[tuple[Any, str]]:
        """A Cognito-like issuer's key and the URL of its published JWKS (a local HTTP server)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        document = json.dumps({"keys": [{**jwk, "kid": "pool-1", "use": "sig", "alg": "RS256"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, *_: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield key, f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
        server.shutdown()

    def test_oidc_issuer_verified_with_its_published_keys(self, jwks: tuple[Any, str]) -> None:
        """A Cognito-like issuer: RS256 tokens checked against its JWKS, the user id from a custom claim."""
        key, url = jwks
        oidc = OidcIssuer(issuer="https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_pool", audience="app-client",
                          jwks_url=url, user_claim="custom:meridian_user_id")
        tokens = UserTokens(KEYS["user"], issuer=ISSUER, oidc=oidc)
        claims = {"iss": oidc.issuer, "aud": "app-client", "exp": int(time.time()) + 60, "custom:meridian_user_id": "usr_9"}
        assert tokens.verify(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "pool-1"})) == "usr_9"
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with pytest.raises(AuthError):
            tokens.verify(jwt.encode(claims, other, algorithm="RS256", headers={"kid": "pool-1"}))
        with pytest.raises(AuthError, match="(?i)audience"):
            tokens.verify(jwt.encode({**claims, "aud": "another-app"}, key, algorithm="RS256", headers={"kid": "pool-1"}))
        assert tokens.verify(tokens.issue("usr_1")) == "usr_1"  # built-in tokens stay accepted by default

    def test_bearer_header_and_operator(self) -> None:
        assert bearer("Bearer abc") == "abc"
        for bad in (None, "", "Basic abc", "Bearer "):
            with pytest.raises(AuthError):
                bearer(bad)
        assert operator_matches("o" * 32, KEYS["operator"]) and not operator_matches("o" * 31, KEYS["operator"])


class TestPeerSignatures:
    RING = KeyRing.single(b"p" * 32, kid="peer-1")

    def test_replay_refused_inside_the_window(self) -> None:
        nonces = NonceCache()
        h = sign_request(self.RING, "POST", "/v1/users", b"{}", "eu-west-1", now=100)
        assert verify_request(self.RING, "POST", "/v1/users", b"{}", h, nonces=nonces, now=101)[0] == "eu-west-1"
        with pytest.raises(PeerAuthError, match="replayed"):
            verify_request(self.RING, "POST", "/v1/users", b"{}", h, nonces=nonces, now=102)

    def test_every_behaviour_changing_header_is_signed(self) -> None:
        signed = {"idempotency-key": "k1", "x-meridian-failover": "1", "x-meridian-hlc": "123", "authorization": "Bearer t"}
        h = sign_request(self.RING, "POST", "/p", b"{}", "eu-west-1", headers=signed, now=100)
        assert verify_request(self.RING, "POST", "/p", b"{}", {**signed, **h}, now=100)
        for name in signed:
            for tampered in ({**signed, name: "other"}, {k: v for k, v in signed.items() if k != name}):
                with pytest.raises(PeerAuthError, match="does not verify"):
                    verify_request(self.RING, "POST", "/p", b"{}", {**tampered, **h}, now=100)
        with pytest.raises(PeerAuthError, match="does not verify"):  # a header added to an unsigned call
            plain = sign_request(self.RING, "POST", "/p", b"{}", "eu-west-1", now=100)
            verify_request(self.RING, "POST", "/p", b"{}", {**plain, "x-meridian-failover": "1"}, now=100)

    def test_future_skew_bounded_tightly(self) -> None:
        h = sign_request(self.RING, "POST", "/p", b"", "eu-west-1", now=129)  # the review's 29 s ahead
        with pytest.raises(PeerAuthError, match="ahead"):
            verify_request(self.RING, "POST", "/p", b"", h, now=100)
        assert MAX_FUTURE_SECONDS <= 5

    def test_previous_peer_key_accepted_during_rotation(self) -> None:
        """A call signed just before every region picked the new key up still verifies."""
        h = sign_request(self.RING, "GET", "/p", b"", "eu-west-1", now=100)
        rotated = self.RING.rotated("peer-2", "q" * 32)
        assert verify_request(rotated, "GET", "/p", b"", h, now=100)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestApiAuthorization:
    def test_no_credential_is_401_for_every_user_route(self, cluster: Cluster) -> None:
        u = new_user(cluster, "eu-west-1")
        path = f"/v1/users/{u['user_id']}"
        for method, suffix, body in (("GET", "", None), ("PUT", "", {"name": "Eve"}), ("GET", "/orders", None),
                                     ("POST", "/orders", {"item": "x", "qty": 1}), ("POST", "/token", None)):
            r = cluster.call("eu-central-1", method, path + suffix, auth=False, json=body, headers={"Idempotency-Key": "k"})
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", (method, suffix, r.text)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = cluster.call("eu-west-1", "GET", path, auth=False, headers=auth("not.a.jwt"))
        assert r.status_code == 401

    def test_another_users_token_is_403_and_changes_nothing(self, cluster: Cluster) -> None:
        alice, mallory = new_user(cluster, "eu-west-1"), new_user(cluster, "eu-west-1")
        r = cluster.call("eu-west-1", "PUT", f"/v1/users/{alice['user_id']}", json={"name": "pwned"}, headers=auth(mallory["token"]))
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        r = cluster.call("eu-west-1", "GET", f"/v1/users/{alice['user_id']}")
        assert r.status_code == 200 and r.json()["name"] == "Ada"

    def test_any_region_verifies_without_calling_another(self, cluster: Cluster) -> None:
        u = new_user(cluster, "eu-west-1")
        cluster.down["eu-west-1"] = True
        r = cluster.call("us-east-1", "POST", f"/v1/users/{u['user_id']}/token")
        assert r.status_code == 200
        assert cluster.services["eu-central-1"].users.verify(r.json()["token"]) == u["user_id"]

    def test_unknown_region_id_is_404_not_500(self, cluster: Cluster) -> None:
        r = cluster.call("eu-west-1", "GET", "/v1/users/usr_01M80HSAS49SQMAC95ENHJPDV6_us-west-2")
        assert r.status_code == 404 and r.json()["error"] == "not_found"


class TestPeerCallsThroughTheApi:
    def peer_headers(self, method: str, path: str, body: bytes, **extra: str) -> dict[str, str]:
        signed = {k.lower(): v for k, v in extra.items()}
        return {**signed, **sign_request(KEYS["peer"], method, path, body, "us-east-1", headers=signed), "content-type": "application/json"}

    def test_replayed_user_creation_creates_no_second_user(self, cluster: Cluster) -> None:
        body = json.dumps({"email": "a@b.c", "name": "x", "residency": "eu"}).encode()
        headers = self.peer_headers("POST", "/v1/users", body)
        first = cluster.call("eu-west-1", "POST", "/v1/users", content=body, headers=headers)
        assert first.status_code == 201
        again = cluster.call("eu-west-1", "POST", "/v1/users", content=body, headers=headers)
        assert again.status_code == 401 and "replayed" in again.json()["message"]
        # Another task of the region has its own nonce cache: the derived id still collides.
        cluster.services["eu-west-1"].nonces = NonceCache()
        other_task = cluster.call("eu-west-1", "POST", "/v1/users", content=body, headers=headers)
        assert other_task.status_code == 401
        users = boto3.client("dynamodb", region_name="eu-west-1").scan(TableName="meridian-api-eu-users")["Items"]
        assert len(users) == 1

    def test_client_failover_mark_is_ignored(self, cluster: Cluster) -> None:
        r = cluster.call("eu-west-1", "POST", "/v1/users", json={"email": "a@b.c", "name": "x", "residency": "eu"},
                         headers={"X-Meridian-Failover": "1"})
        assert r.status_code == 201
        item: dict[str, Any] = boto3.client("dynamodb", region_name="eu-west-1").get_item(
            TableName="meridian-api-eu-users", Key={"user_id": {"S": r.json()["user_id"]}})["Item"]
        assert item["failover"] == {"BOOL": False}

    def test_signed_call_with_a_header_added_is_refused(self, cluster: Cluster) -> None:
        body = json.dumps({"email": "a@b.c", "name": "x", "residency": "eu"}).encode()
        headers = {**self.peer_headers("POST", "/v1/users", body), "X-Meridian-Failover": "1"}
        r = cluster.call("eu-west-1", "POST", "/v1/users", content=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "peer_auth"

    def test_forwarded_order_carries_a_verified_credential(self, cluster: Cluster) -> None:
        """eu-central-1 forwards to the home region, which verifies the user's token again."""
        u = new_user(cluster, "eu-west-1")
        cluster.replicate("directory", "eu", "eu-west-1", "eu-central-1")
        r = cluster.call("eu-central-1", "POST", f"/v1/users/{u['user_id']}/orders", json={"item": "book", "qty": 1},
                         headers={"Idempotency-Key": "o-1"})
        assert r.status_code == 201 and r.headers["X-Meridian-Region"] == "eu-west-1"
