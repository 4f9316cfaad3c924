"""NodeConfig.validate: the tombstone rules' settings are checked before a node starts."""

from __future__ import annotations

import pytest

from kvstore.core.tombstones import DEFAULT_SKEW_MS
from kvstore.node.config import NodeConfig

SKEW = DEFAULT_SKEW_MS


def config(**kw) -> NodeConfig:
    return NodeConfig(node_id="n1", **kw)


def test_the_defaults_are_valid():
    config().validate()


def test_grace_must_exceed_twice_the_skew_allowance():
    with pytest.raises(ValueError, match=r"^--tombstone-grace 120, --max-clock-skew 60, "
                                         r"--hint-max-age 30 .*twice the clock skew"):
        config(tombstone_grace_ms=2 * SKEW, hint_max_age_ms=30_000).validate()
    config(tombstone_grace_ms=2 * SKEW + 1, hint_max_age_ms=30_000).validate()


def test_hints_must_expire_before_grace_minus_skew():
    grace = 10 * SKEW
    with pytest.raises(ValueError, match=r"--hint-max-age 540 .*hints must expire"):
        config(tombstone_grace_ms=grace, hint_max_age_ms=grace - SKEW).validate()
    config(tombstone_grace_ms=grace, hint_max_age_ms=grace - SKEW - 1).validate()


def test_hint_lifetime_does_not_matter_without_hinted_handoff():
    config(tombstone_grace_ms=3 * SKEW, hint_max_age_ms=10**9, hinted_handoff=False).validate()
    with pytest.raises(ValueError,
                       match=r"^--tombstone-grace 60, --max-clock-skew 60 \(seconds\) is not safe"):
        config(tombstone_grace_ms=SKEW, hinted_handoff=False).validate()


def test_antientropy_interval_may_be_off_but_not_negative():
    config(antientropy_interval=0).validate()
    with pytest.raises(ValueError, match="--antientropy-interval"):
        config(antientropy_interval=-1).validate()


def test_a_smaller_skew_allowance_allows_a_shorter_grace_period():
    config(tombstone_grace_ms=3_000, max_clock_skew_ms=1_000, hint_max_age_ms=1_000).validate()
    with pytest.raises(ValueError, match="twice the clock skew"):
        config(tombstone_grace_ms=3_000, max_clock_skew_ms=1_500).validate()
