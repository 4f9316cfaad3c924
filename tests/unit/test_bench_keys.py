"""Key choosers: determinism, range, and the zipfian shape (YCSB's generator)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kvstore.bench.keys import UniformKeys, ZipfianKeys, key_name, make_keys, zeta


def test_same_seed_same_sequence() -> None:
    for dist in ("uniform", "zipfian"):
        a = make_keys(dist, 1000, random.Random(7))
        b = make_keys(dist, 1000, random.Random(7))
        assert [a.next_index() for _ in range(500)] == [b.next_index() for _ in range(500)]


def test_indices_stay_in_range_and_small_key_spaces_work() -> None:
    for records in (1, 2, 3, 10, 1000):
        choosers = (UniformKeys(records, random.Random(1)), ZipfianKeys(records, random.Random(1)))
        for keys in choosers:
            seen = {keys.next_index() for _ in range(2000)}
            assert seen <= set(range(records))
    two = ZipfianKeys(2, random.Random(3))
    assert {two.next_index() for _ in range(200)} == {0, 1}


def test_zipfian_rank_frequencies_follow_the_law() -> None:
    n, draws = 1000, 200_000
    z = ZipfianKeys(n, random.Random(42), scrambled=False)
    counts = Counter(z.next_rank() for _ in range(draws))
    zn = zeta(n, 0.99)
    for rank in (0, 1, 2, 9):
        expected = draws / ((rank + 1) ** 0.99) / zn
        # ranks 0 and 1 are exact in Gray's method; deeper ranks are approximated
        assert abs(counts[rank] - expected) < 0.15 * expected + 50, (rank, counts[rank], expected)
    top = [counts[r] for r in range(5)]
    assert top == sorted(top, reverse=True)
    # the hottest 10% of keys take most of the traffic; uniform would give them 10%
    hot = sum(counts[r] for r in range(n // 10))
    assert hot / draws > 0.6
    print(f"\nzipfian n={n}: rank0 {counts[0] / draws:.3f} (law {1 / zn:.3f}), "
          f"top 10% of keys {hot / draws:.2f} of draws")


def test_scramble_is_a_bijection_that_moves_the_hot_keys() -> None:
    n = 997
    z = ZipfianKeys(n, random.Random(1))
    mapped = [z.rank_to_index(r) for r in range(n)]
    assert sorted(mapped) == list(range(n))
    assert mapped[:5] != list(range(5))


def test_uniform_is_roughly_flat() -> None:
    keys = UniformKeys(10, random.Random(5))
    counts = Counter(keys.next_index() for _ in range(20_000))
    assert all(1700 < counts[i] < 2300 for i in range(10))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_keys("latest", 10, random.Random(1))
    with pytest.raises(ValueError):
        UniformKeys(0, random.Random(1))
    with pytest.raises(ValueError):
        ZipfianKeys(10, random.Random(1), theta=1.0)
    assert key_name(42) == "bench:0000000042"
