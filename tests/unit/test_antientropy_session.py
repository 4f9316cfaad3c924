"""The anti-entropy exchange session: message flow, validation, misuse, and measured bytes."""

from __future__ import annotations

import bisect
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.core import antientropy as ae
from kvstore.core.antientropy import (
    Done,
    Initiator,
    NeedEntries,
    ProtocolError,
    Responder,
    Send,
    SessionStateError,
    Stats,
    run_local,
)
from kvstore.core.merkle import MerkleTree
from kvstore.core.ring import TOKEN_MAX, TOKEN_MIN, Ring, token_of

WHOLE = (TOKEN_MIN, TOKEN_MIN)


def _tree(data: dict[bytes, bytes], start: int = WHOLE[0], end: int = WHOLE[1],
          depth: int = 10) -> MerkleTree:
    return MerkleTree.build(start, end, ((token_of(k), k, d) for k, d in data.items()), depth)


def _scan(data: dict[bytes, bytes]):
    """A storage scan over the replica (as Engine.scan: start exclusive, end inclusive)."""
    items = sorted((token_of(k), k, d) for k, d in data.items())
    tokens = [t for t, _, _ in items]

    def scan(token_ranges):
        out = []
        for lo, hi in token_ranges:
            parts = [(lo, hi)] if lo < hi else [(lo, TOKEN_MAX), (TOKEN_MIN - 1, hi)]
            for s, e in parts:
                out.extend(items[bisect.bisect_right(tokens, s):bisect.bisect_right(tokens, e)])
        return out
    return scan


def _replicas(n: int, diverged: int, seed: int) -> tuple[dict, dict, set]:
    """Two replicas of n keys that differ on `diverged` keys (changed, or on one side only)."""
    rnd = random.Random(seed)
    a = {f"user:{i:08d}".encode(): rnd.randbytes(16) for i in range(n)}
    b = dict(a)
    picked = rnd.sample(sorted(a), diverged)
    for i, key in enumerate(picked):
        if i % 3 == 0:
            b[key] = rnd.randbytes(16)  # concurrent / newer write on one side
        elif i % 3 == 1:
            del b[key]  # b missed the write
        else:
            del a[key]  # a missed the write
    return a, b, set(picked)


def _steps(a, b, **kw):
    """Run a session by hand, returning every (request, reply) pair and the result."""
    ini, resp = Initiator(_tree(a), **kw), Responder(_tree(b))
    scan_a, scan_b = _scan(a), _scan(b)
    log = []
    while True:
        act = ini.next_action()
        if isinstance(act, Done):
            return log, act.result
        if isinstance(act, NeedEntries):
            ini.provide_entries(scan_a(act.ranges))
            continue
        reply = resp.receive(act.data)
        if isinstance(reply, NeedEntries):
            reply = resp.provide_entries(scan_b(reply.ranges))
        log.append((act.data, reply.data))
        ini.receive(reply.data)


def test_equal_replicas_take_one_round_trip():
    a, _, _ = _replicas(300, 0, 1)
    log, result = _steps(a, dict(a))
    assert len(log) == 1
    assert result.differing_leaves == [] and result.push == [] and result.fetch == []
    assert result.stats.summary() == {
        "ranges_compared": 1, "leaves_differing": 0, "keys_sent": 0, "keys_received": 0,
        "bytes_transferred": sum(len(q) + len(r) for q, r in log),
    }


def test_empty_and_one_sided_replicas():
    a, _, _ = _replicas(50, 0, 2)
    for left, right in (({}, {}), (a, {}), ({}, a)):
        result = run_local(Initiator(_tree(left)), Responder(_tree(right)),
                           _scan(left), _scan(right))
        assert sorted(result.push) == sorted(left)
        assert sorted(result.fetch) == sorted(right)


def test_node_limit_bounds_every_hashes_message():
    a, b, diverged = _replicas(2000, 200, 3)
    log, result = _steps(a, b, max_nodes=16, max_keys=40)
    assert set(result.push) | set(result.fetch) == diverged
    for request, _ in log:
        if request[2] == ae.T_HASHES:
            # header 20 bytes, level, count, <=16 delta varints (<=2 bytes) and hashes
            assert len(request) <= 20 + 1 + 1 + 16 * (2 + ae.HASH_SIZE)
        else:
            assert request[2] == ae.T_KEYS


def test_force_leaves_compares_keys_of_matching_leaves():
    a, _, _ = _replicas(200, 0, 4)
    tree = _tree(a)
    leaf = tree.leaf_of(token_of(b"user:00000007"))
    result = run_local(Initiator(tree, force_leaves=[leaf]), Responder(_tree(dict(a))),
                       _scan(a), _scan(a))
    assert result.differing_leaves == [] and result.push == [] and result.fetch == []
    assert (b"user:00000007", a[b"user:00000007"]) in result.matched
    assert all(tree.leaf_of(token_of(k)) == leaf for k, _ in result.matched)


def test_peek_shape_names_the_tree_a_request_is_about():
    tree = _tree({}, -5, 77, depth=4)
    request = Initiator(tree).next_action()
    assert ae.peek_shape(request.data) == (-5, 77, 4)
    for bad in (b"", b"\x00" * 20, request.data[:10]):
        with pytest.raises(ProtocolError):
            ae.peek_shape(bad)


def test_sessions_sum_their_stats():
    total = Stats(ranges_compared=1, keys_sent=2) + Stats(ranges_compared=1, keys_received=3)
    assert (total.ranges_compared, total.keys_sent, total.keys_received) == (2, 2, 3)


# --- validation: malformed input is rejected with a clear error, state unchanged ----------


def _first_pair(a, b):
    ini, resp = Initiator(_tree(a)), Responder(_tree(b))
    request = ini.next_action()
    assert isinstance(request, Send)
    return ini, resp, request.data, resp.receive(request.data).data


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda r: r[:-1], "truncated|bitmap"),
    (lambda r: r + b"\x00", "trailing"),
    (lambda r: b"\x00" + r[1:], "magic"),
    (lambda r: r[:1] + b"\x09" + r[2:], "format"),
    (lambda r: r[:2] + bytes([ae.T_KEYS_REPLY]) + r[3:], "unexpected message type"),
    (lambda r: r[:3] + (5).to_bytes(8, "big") + r[11:], "shape mismatch"),
    (lambda r: r[:20] + b"\x03" + r[21:], "different level"),
    (lambda r: r[:21] + b"\x02" + r[22:], "covers 2 nodes"),
    (lambda r: r[:-1] + b"\x02", "past its last node"),
    (lambda r: b"", "truncated"),
])
def test_initiator_rejects_malformed_replies_and_stays_usable(mutate, message):
    a, b, _ = _replicas(100, 5, 5)
    ini, _, _, reply = _first_pair(a, b)
    before = (ini.result.stats.messages, ini.result.stats.bytes_transferred)
    with pytest.raises(ProtocolError, match=message):
        ini.receive(mutate(reply))
    assert (ini.result.stats.messages, ini.result.stats.bytes_transferred) == before
    ini.receive(reply)  # the real reply still works: nothing was half-applied
    _, clean = _steps(a, b)
    resp = Responder(_tree(b))
    while not isinstance(act := ini.next_action(), Done):
        if isinstance(act, NeedEntries):
            ini.provide_entries(_scan(a)(act.ranges))
            continue
        r = resp.receive(act.data)
        if isinstance(r, NeedEntries):
            r = resp.provide_entries(_scan(b)(r.ranges))
        ini.receive(r.data)
    assert (act.result.push, act.result.fetch) == (clean.push, clean.fetch)


def _keys_exchange(a, b):
    """An initiator waiting for a KEYS reply, the request, the real reply."""
    ini, resp = Initiator(_tree(a)), Responder(_tree(b))
    while True:
        act = ini.next_action()
        if isinstance(act, NeedEntries):
            ini.provide_entries(_scan(a)(act.ranges))
            continue
        assert isinstance(act, Send)
        reply = resp.receive(act.data)
        if isinstance(reply, NeedEntries):
            return ini, act.data, resp.provide_entries(_scan(b)(reply.ranges)).data
        ini.receive(reply.data)


def _keys_reply(tree, n_entries, differ=(), missing=(), extra=()):
    w = ae._Writer()
    ae._header(w, ae.T_KEYS_REPLY, tree)
    w.varint(n_entries)
    w.ascending(list(differ))
    w.ascending(list(missing))
    w.varint(len(extra))
    for key in extra:
        w.varint(len(key))
        w.raw(key)
    return bytes(w.buf)


def test_initiator_validates_keys_replies():
    a, b, _ = _replicas(100, 5, 6)
    ini, _, reply = _keys_exchange(a, b)
    leaves, entries = ini._keys_sent
    n = len(entries)
    sent_key = entries[0][0]
    outside = next(k for k in (f"x{i}".encode() for i in range(10_000))
                   if ini.tree.leaf_of(token_of(k)) not in leaves)
    fresh = next(k for k in (f"y{i}".encode() for i in range(100_000))
                 if ini.tree.leaf_of(token_of(k)) in leaves)
    bad = [
        (_keys_reply(ini.tree, n + 1), "different number"),
        (_keys_reply(ini.tree, n, differ=[n]), "out of range"),
        (_keys_reply(ini.tree, n, differ=[0], missing=[0]), "both"),
        (_keys_reply(ini.tree, n, extra=[sent_key]), "which we sent"),
        (_keys_reply(ini.tree, n, extra=[outside]), "outside the leaves"),
        (_keys_reply(ini.tree, n, extra=[fresh, fresh]), "twice"),
    ]
    for data, message in bad:
        with pytest.raises(ProtocolError, match=message):
            ini.receive(data)
    ini.receive(reply)


def test_responder_validates_requests():
    _, b, _ = _replicas(100, 5, 7)
    tree = _tree(b)
    resp = Responder(tree)

    def hashes(level, indices):
        w = ae._Writer()
        ae._header(w, ae.T_HASHES, tree)
        w.u8(level)
        w.ascending(indices)
        for _ in indices:
            w.raw(b"\x00" * ae.HASH_SIZE)
        return bytes(w.buf)

    def keys(leaves, entries):
        w = ae._Writer()
        ae._header(w, ae.T_KEYS, tree)
        w.ascending(leaves)
        w.varint(len(entries))
        for key, digest in entries:
            w.varint(len(key))
            w.raw(key)
            w.raw(digest)
        return bytes(w.buf)

    key = b"user:00000001"
    leaf = tree.leaf_of(token_of(key))
    other = (leaf + 1) % tree.leaves
    for data, message in [
        (hashes(11, [0]), "deeper"),
        (hashes(1, [0, 1, 2]), "out of range"),
        (hashes(1, [0])[:-1], "truncated"),
        (keys([other], [(key, b"d" * 16)]), "does not belong"),
        (keys([leaf], [(key, b"d" * 16), (key, b"d" * 16)]), "twice"),
        (keys([leaf], [(key, b"d" * 15)]), "truncated|does not belong|trailing"),
        (keys([tree.leaves], []), "out of range"),
        (b"\xae\x01\x02" + b"\x00" * 17, "unexpected message type"),
        ("not bytes", "expected bytes"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            resp.receive(data)
    assert resp.stats.messages == 0  # nothing rejected was counted
    assert isinstance(resp.receive(hashes(1, [0, 1])), Send)
    pending = resp.receive(keys([leaf], [(key, b"d" * 16)]))
    assert isinstance(pending, NeedEntries)
    with pytest.raises(SessionStateError):
        resp.receive(hashes(0, [0]))
    with pytest.raises(ValueError, match="outside the requested"):
        resp.provide_entries([(token_of(b"zz"), b"zz", b"d" * 16)] if
                             tree.leaf_of(token_of(b"zz")) != leaf else [])
    reply = resp.provide_entries(_scan(b)(pending.ranges))
    assert isinstance(reply, Send)


def test_misuse_is_a_local_error():
    a, b, _ = _replicas(50, 3, 8)
    ini = Initiator(_tree(a))
    with pytest.raises(SessionStateError):
        ini.receive(b"")
    with pytest.raises(SessionStateError):
        ini.provide_entries([])
    ini.next_action()
    with pytest.raises(SessionStateError, match="in flight"):
        ini.next_action()
    with pytest.raises(SessionStateError):
        Responder(_tree(b)).provide_entries([])
    with pytest.raises(ValueError):
        Initiator(_tree(a), max_nodes=0)
    with pytest.raises(ValueError):
        Initiator(_tree(a), force_leaves=[1 << 10])


_FUZZ_A, _FUZZ_B, _ = _replicas(60, 6, 9)
_FUZZ = (_FUZZ_A, _FUZZ_B, _steps(_FUZZ_A, _FUZZ_B)[0])


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_bytes_only_ever_raise_protocol_errors(data):
    a, b, log = _FUZZ
    request, reply = data.draw(st.sampled_from(log))
    target = data.draw(st.sampled_from(["request", "reply"]))
    raw = bytearray(request if target == "request" else reply)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if op == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[data.draw(st.integers(0, len(raw))):]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=8))
    if target == "request":
        resp = Responder(_tree(b))
        try:
            out = resp.receive(bytes(raw))
            if isinstance(out, NeedEntries):
                resp.provide_entries(_scan(b)(out.ranges))
        except ProtocolError:
            pass
        return
    # replay the session up to this reply, then feed the mutated one
    ini, resp = Initiator(_tree(a)), Responder(_tree(b))
    while True:
        act = ini.next_action()
        if isinstance(act, NeedEntries):
            ini.provide_entries(_scan(a)(act.ranges))
            continue
        real = resp.receive(act.data)
        if isinstance(real, NeedEntries):
            real = resp.provide_entries(_scan(b)(real.ranges))
        if act.data == request:
            try:
                ini.receive(bytes(raw))
            except ProtocolError:
                ini.receive(real.data)
            return
        ini.receive(real.data)


# --- measurement ------------------------------------------------------------------------


def _varint_len(n: int) -> int:
    w = ae._Writer()
    w.varint(n)
    return len(w.buf)


def _full_copy_bytes(data: dict[bytes, bytes], value_bytes: int = 0) -> int:
    """Keys (length-prefixed) and digests, plus `value_bytes` per key when copying values."""
    return sum(_varint_len(len(k)) + len(k) + len(d) + value_bytes for k, d in data.items())


def test_measure_10k_keys_1pct_divergence():
    """Bytes exchanged by a session vs a full copy; printed and recorded in docs/."""
    a, b, diverged = _replicas(10_000, 100, 10)
    full_digests = _full_copy_bytes(a)
    full_values = _full_copy_bytes(a, 100)
    print(f"\n10,000 keys, {len(diverged)} diverged; full copy of keys+digests "
          f"{full_digests:,} B, of keys+100-byte values {full_values:,} B")
    print(f"{'layout':<34} {'msgs':>5} {'hashes':>7} {'digests':>8} {'bytes':>8} "
          f"{'vs digests':>10} {'vs values':>9} {'xfer/div':>8}")
    rows = []
    cpu_ms: dict[str, float] = {}
    scan_a, scan_b = _scan(a), _scan(b)
    for label, depth, level in (("one tree, depth 10 (default)", 10, 0),
                                ("one tree, depth 10, start_level 6", 10, 6),
                                ("one tree, depth 12", 12, 0), ("one tree, depth 14", 14, 0)):
        ini = Initiator(_tree(a, depth=depth), start_level=level)
        began = time.process_time()
        result = run_local(ini, Responder(_tree(b, depth=depth)), scan_a, scan_b)
        cpu_ms[label] = (time.process_time() - began) * 1000
        rows.append((label, result.stats, set(result.push) | set(result.fetch)))
    ring = Ring.of_nodes(["n1", "n2", "n3"], vnodes=16)
    total, moved = Stats(), set()
    scan_a, scan_b = _scan(a), _scan(b)
    for lo, hi, _ in ring.ranges():
        ra = {k: d for _, k, d in scan_a([(lo, hi)])}
        rb = {k: d for _, k, d in scan_b([(lo, hi)])}
        res = run_local(Initiator(_tree(ra, lo, hi)), Responder(_tree(rb, lo, hi)),
                        _scan(ra), _scan(rb))
        total += res.stats
        moved |= set(res.push) | set(res.fetch)
    rows.append((f"{total.ranges_compared} ring ranges, depth 10", total, moved))
    for label, s, keys in rows:
        assert keys == diverged  # exactly the diverged keys move, no more
        assert s.bytes_transferred < full_digests / 4
        print(f"{label:<34} {s.messages:>5} {s.hashes_exchanged:>7} {s.digests_exchanged:>8} "
              f"{s.bytes_transferred:>8,} {s.bytes_transferred / full_digests:>10.3f} "
              f"{s.bytes_transferred / full_values:>9.4f} {len(keys) / len(diverged):>8.2f}")
    print("CPU for both sides of one session (incl. test scans): " +
          ", ".join(f"{label}: {ms:.0f} ms" for label, ms in cpu_ms.items()))
    s = rows[0][1]
    print(f"keys sent {s.keys_sent}, received {s.keys_received} (differing digests count "
          f"both ways); records to move ~{(s.keys_sent + s.keys_received) * 150:,} B at "
          f"~150 B per record")
