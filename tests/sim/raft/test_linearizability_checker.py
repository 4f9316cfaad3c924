"""The linearizability checker must accept linearizable histories and reject the others;
it is cross-checked against a brute-force search on random small histories."""

from __future__ import annotations

import math
import random

from .linearizability import Op, brute_force_check, check_history, check_key

INF = math.inf


def put(c, v, call, ret=INF, known=True):
    return Op(c, "k", "put", (v,), call, ret, None, known)


def get(c, v, call, ret):
    return Op(c, "k", "get", (), call, ret, v, True)


def cas(c, e, n, ok, call, ret=INF, known=True):
    return Op(c, "k", "cas", (e, n), call, ret, ok, known)


def test_sequential_history_is_linearizable() -> None:
    assert check_key([put(0, "a", 0, 1), get(1, "a", 2, 3), cas(0, "a", "b", True, 4, 5),
                      get(1, "b", 6, 7)])


def test_stale_read_after_a_completed_write_is_rejected() -> None:
    assert not check_key([put(0, "a", 0, 1), put(0, "b", 2, 3), get(1, "a", 4, 5)])


def test_read_of_a_value_nobody_wrote_is_rejected() -> None:
    assert not check_key([put(0, "a", 0, 10), get(1, "z", 1, 2)])


def test_two_successful_cas_with_the_same_expected_value_are_rejected() -> None:
    h = [put(0, "a", 0, 1), cas(1, "a", "b", True, 2, 10), cas(2, "a", "c", True, 3, 11)]
    assert not check_key(h)


def test_concurrent_operations_may_take_effect_in_either_order() -> None:
    h = [put(0, "a", 0, 10), put(1, "b", 0, 10), get(2, "a", 11, 12)]
    assert check_key(h)
    h2 = [put(0, "a", 0, 10), put(1, "b", 0, 10), get(2, "a", 11, 12), get(2, "b", 13, 14)]
    assert not check_key(h2)  # a value cannot come back without a write


def test_indeterminate_write_may_or_may_not_happen_but_only_after_its_call() -> None:
    assert check_key([put(0, "a", 0, 1), put(1, "b", 2, known=False), get(2, "a", 3, 4)])
    assert check_key([put(0, "a", 0, 1), put(1, "b", 2, known=False), get(2, "b", 3, 4)])
    assert not check_key([put(0, "a", 0, 1), get(2, "b", 3, 4), put(1, "b", 5, known=False)])


def test_history_check_reports_the_bad_key() -> None:
    ops = [put(0, "a", 0, 1), Op(1, "other", "put", ("x",), 0, 1, None, True),
           get(2, "zz", 2, 3)]
    ok, key = check_history(ops)
    assert not ok and key == "k"


def _random_history(r: random.Random) -> list[Op]:
    ops, values = [], [None, "a", "b"]
    for c in range(r.randint(1, 3)):
        t = r.randrange(3)
        for _ in range(r.randint(1, 2)):
            call, ret = t, t + r.randint(1, 6)
            known = r.random() > 0.2
            kind = r.choice(("put", "get", "cas"))
            if kind == "put":
                ops.append(put(c, r.choice("ab"), call, ret if known else INF, known))
            elif kind == "get":
                ops.append(get(c, r.choice(values), call, ret))
            else:
                ops.append(cas(c, r.choice(values), r.choice("ab"), r.random() < 0.5, call,
                               ret if known else INF, known))
            t = ret + r.randrange(2)
    return ops


def test_agrees_with_brute_force_on_random_small_histories() -> None:
    r = random.Random(1)
    seen = {True: 0, False: 0}
    for _ in range(1500):
        h = _random_history(r)
        want = brute_force_check(h)
        assert check_key(h) == want, [o.describe() for o in h]
        seen[want] += 1
    assert seen[True] > 100 and seen[False] > 100  # both outcomes were exercised
