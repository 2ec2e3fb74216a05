"""meridian.rotation: dated key ids, the activation delay, the minimum key age, the secret's other fields
kept, and the property the timings exist for: whatever a region signs verifies in every region for the
token's whole life, whichever secret version each region has read."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian import auth, sessions
from meridian.keys import KeyRing
from meridian.rotation import (
    ACTIVATION_SECONDS,
    DEFAULT_REFRESH_SECONDS,
    LONGEST_TOKEN_TTL,
    MIN_KEY_AGE_SECONDS,
    MIN_ROTATION_DAYS,
    KeyTooYoung,
    RotationError,
    issued_at,
    key_id,
    plan_rotation,
    read_rings,
    signing_ring,
)
from meridian.topology import TopologyError, load_topology

T0 = 1_795_000_000.0
SECRET = json.dumps({"session": "a" * 40, "peer": "p1=" + "p" * 40, "users": "u1=" + "u" * 40, "operator": "o" * 40,
                     "claims": "c" * 64})


class TestTimings:
    def test_the_longest_token_ttl_covers_every_token(self) -> None:
        assert max(auth.TTL_SECONDS, sessions.TTL_SECONDS) <= LONGEST_TOKEN_TTL
        assert MIN_ROTATION_DAYS * 86400 >= 2 * LONGEST_TOKEN_TTL
        assert MIN_KEY_AGE_SECONDS > LONGEST_TOKEN_TTL + ACTIVATION_SECONDS
        assert ACTIVATION_SECONDS >= 2 * DEFAULT_REFRESH_SECONDS

    def test_key_ids_are_dated_and_valid(self) -> None:
        kid = key_id(T0)
        assert kid == "20261118T110640Z" and issued_at(kid) == T0
        assert issued_at("k1234abcd") is None
        KeyRing.parse(f"{kid}={'x' * 32}")  # a valid key id


class TestSigningRing:
    def test_a_new_key_is_accepted_at_once_and_signs_after_the_activation_delay(self) -> None:
        ring = KeyRing.parse(f"{key_id(T0)}={'n' * 32} old={'o' * 32}")
        early = signing_ring(ring, now=T0 + ACTIVATION_SECONDS - 1)
        assert early.current == "old" and early.signing_key == b"o" * 32 and early.get(key_id(T0)) == b"n" * 32
        assert signing_ring(ring, now=T0 + ACTIVATION_SECONDS) == ring

    def test_undated_or_single_rings_are_used_as_they_are(self) -> None:
        single = KeyRing.parse(f"{key_id(T0)}={'n' * 32}")
        assert signing_ring(single, now=T0) == single
        undated = KeyRing.parse(f"new={'n' * 32} old={'o' * 32}")
        assert signing_ring(undated, now=T0) == undated


class TestPlan:
    def test_rotates_the_named_rings_and_keeps_everything_else(self) -> None:
        rotation = plan_rotation(SECRET, ["session", "peer"], now=T0, new_secret=lambda: "N" * 64)
        value = json.loads(rotation.secret_string)
        rings = read_rings(rotation.secret_string)
        assert rings["session"].current == key_id(T0) and [k for k, _ in rings["session"].keys][1].startswith("k")
        assert [k for k, _ in rings["peer"].keys] == [key_id(T0), "p1"]
        assert value["users"] == "u1=" + "u" * 40 and value["operator"] == "o" * 40 and value["claims"] == "c" * 64
        assert [c.ring for c in rotation.changes] == ["session", "peer"] and rotation.changes[1].kept == ("p1",)
        assert "N" * 64 not in repr(rotation)

    def test_keep_one_drops_the_oldest(self) -> None:
        once = plan_rotation(SECRET, ["peer"], now=T0).secret_string
        twice = plan_rotation(once, ["peer"], now=T0 + MIN_KEY_AGE_SECONDS)
        assert [k for k, _ in read_rings(twice.secret_string)["peer"].keys] == [key_id(T0 + MIN_KEY_AGE_SECONDS), key_id(T0)]
        assert twice.changes[0].dropped == ("p1",)

    def test_a_young_key_is_not_rotated_again_unless_forced(self) -> None:
        once = plan_rotation(SECRET, ["users"], now=T0).secret_string
        with pytest.raises(KeyTooYoung, match=r"ring 'users': its current key \S+ is 2.0 h old; rotating now would drop key u1"):
            plan_rotation(once, ["users"], now=T0 + 7200)
        assert plan_rotation(once, ["users"], now=T0 + 7200, force=True).changes[0].dropped == ("u1",)

    @pytest.mark.parametrize(("secret", "message"), [
        ("not json", "the secret is not JSON"),
        ("[1]", "not a JSON object"),
        (json.dumps({"session": "a" * 40}), "lacks the key ring(s) peer, users, operator"),
        (json.dumps({"session": "a" * 4, "peer": "a" * 40, "users": "a" * 40, "operator": "a" * 40}), "use at least 32"),
    ])
    def test_a_bad_secret_is_one_line(self, secret: str, message: str) -> None:
        with pytest.raises(RotationError, match=re.escape(message)):
            plan_rotation(secret, ["session"], now=T0)

    def test_unknown_ring(self) -> None:
        with pytest.raises(RotationError, match="unknown ring claims"):
            plan_rotation(SECRET, ["claims"], now=T0)


class TestConfig:
    @pytest.mark.parametrize("days", [0, 2, 30, 365])
    def test_accepted(self, days: int) -> None:
        topology = load_topology({"regions": ["us-east-1", "eu-west-1"], "keyRotationDays": days})
        assert topology.operations.key_rotation_days == days

    @pytest.mark.parametrize("days", [1, -1, 366])
    def test_refused_in_one_line(self, days: int) -> None:
        with pytest.raises(TopologyError, match=rf"meridian:keyRotationDays is {days}; use 0 \(no scheduled rotation\) or 2 to 365"):
            load_topology({"regions": ["us-east-1", "eu-west-1"], "keyRotationDays": days})


@settings(max_examples=300, deadline=None)
@given(
    interval_days=st.integers(MIN_ROTATION_DAYS, 40),
    rotations=st.integers(1, 4),
    near=st.integers(0, 3),
    # when the token is signed, from the rotation ``near``: often within the activation window, where it matters
    offset=st.one_of(st.floats(0, ACTIVATION_SECONDS + 60), st.floats(-3600, MIN_ROTATION_DAYS * 86400 - LONGEST_TOKEN_TTL)),
    signer_lag=st.floats(0, DEFAULT_REFRESH_SECONDS),
    verify_after=st.one_of(st.floats(0, 60), st.floats(0, LONGEST_TOKEN_TTL)),
    verifier_lag=st.floats(0, DEFAULT_REFRESH_SECONDS),
)
def test_what_a_region_signs_verifies_everywhere_for_a_token_lifetime(interval_days: int, rotations: int, near: int, offset: float,
                                                                      signer_lag: float, verify_after: float,
                                                                      verifier_lag: float) -> None:
    """Rotations every ``interval_days``; each region reads the secret at most one refresh period late. A
    token signed by one region at any time verifies in any region at any time of its life."""
    times = [T0 + i * interval_days * 86400 for i in range(rotations)]
    versions = [(T0 - 1e9, SECRET)]
    for t in times:
        versions.append((t, plan_rotation(versions[-1][1], ["session"], now=t).secret_string))

    def seen(at: float) -> KeyRing:
        return read_rings([v for made, v in versions if made <= at][-1])["session"]

    signed = times[min(near, rotations - 1)] + offset
    ring = signing_ring(seen(signed - signer_lag), now=signed)
    verified = signed + verify_after
    assert seen(verified - verifier_lag).get(ring.current) == ring.signing_key
