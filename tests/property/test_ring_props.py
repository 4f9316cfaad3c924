"""Ring properties: exact preference lists, balance, and minimal movement on join."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core.ring import DEFAULT_VNODES, Ring, token_of

node_ids = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1,
                            max_size=12), min_size=1, max_size=8, unique=True)
keys = st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=50)


@settings(max_examples=60, deadline=None)
@given(node_ids, keys, st.integers(1, 5))
def test_every_key_maps_to_exactly_n_distinct_nodes(ids, key_list, n):
    ring = Ring.of_nodes(ids, vnodes=16)
    expected = min(n, len(ids))
    for key in key_list:
        pref = ring.preference_list(key, n)
        assert len(pref) == expected and len(set(pref)) == expected
        assert set(pref) <= set(ids)
        # the first replica owns the key's token: the first token clockwise from it
        tokens = [t for t in ring.tokens if t >= token_of(key)] or [ring.tokens[0]]
        assert pref[0] == ring.owners[ring.tokens.index(tokens[0])]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1,
                        max_size=12), min_size=5, max_size=5, unique=True))
def test_five_node_ring_is_balanced_with_default_vnodes(ids):
    shares = Ring.of_nodes(ids, DEFAULT_VNODES).ownership()
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    busiest = max(shares.values()) / (1 / 5)
    assert busiest <= 1.15, f"busiest node owns {busiest:.3f}x the mean share"


def test_named_five_node_ring_balance():
    shares = Ring.of_nodes([f"n{i}" for i in range(1, 6)]).ownership()
    assert max(shares.values()) * 5 <= 1.15


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.integers(2, 8))
def test_adding_a_node_moves_about_one_in_n_plus_one_keys(n):
    ids = [f"node{i}" for i in range(n)]
    before = Ring.of_nodes(ids)
    after = Ring.of_nodes([*ids, "newcomer"])
    sample = [f"key-{i}".encode() for i in range(4000)]
    moved = 0
    for key in sample:
        old, new = before.preference_list(key, 1)[0], after.preference_list(key, 1)[0]
        if old != new:
            moved += 1
            assert new == "newcomer", "a key moved between two old nodes"
    fraction = moved / len(sample)
    expected = 1 / (n + 1)
    assert 0.75 * expected <= fraction <= 1.25 * expected, (fraction, expected)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(node_ids, st.integers(1, 5))
def test_replica_shares_count_each_range_once_per_replica(ids, n):
    ring = Ring.of_nodes(ids, vnodes=16)
    shares = ring.replica_shares(n)
    assert abs(sum(shares.values()) - min(n, len(ids))) < 1e-9
    primary = ring.ownership()
    for node in ids:  # a node stores at least what it leads, and never more than everything
        assert primary[node] - 1e-12 <= shares[node] <= 1.0 + 1e-12


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(2, 6), st.integers(1, 3), st.booleans(), keys)
def test_moves_say_exactly_which_keys_change_owners(size, n, join, key_list):
    from kvstore.core.ring import moves
    ids = [f"n{i}" for i in range(size)]
    before = Ring.of_nodes(ids, vnodes=8)
    after = Ring.of_nodes([*ids, "new"] if join else ids[1:], vnodes=8)
    found = moves(before, after, n)
    for key in key_list:
        token = token_of(key)
        old, new = before.preference_list(key, n), after.preference_list(key, n)
        inside = [m for m in found if (m.start < token <= m.end) or
                  (m.start >= m.end and (token > m.start or token <= m.end))]
        if old == new:
            assert not inside
        else:
            assert len(inside) == 1 and inside[0].before == tuple(old) \
                and inside[0].after == tuple(new)
    for m in found:  # a join only gains the newcomer; a decommission only loses n0
        assert m.gained == (("new",) if join else m.gained)
        assert (m.lost == ("n0",)) if not join else True
