"""The data-path history checker must accept correct histories and catch each kind of bad
one: hand-made histories, one invariant at a time, including the faults that exempt."""

from __future__ import annotations

import itertools

from .checker import check
from .history import FAILED, OK, UNKNOWN, Copy, History, Loss, Op, Refusal

REPLICAS = ("n1", "n2", "n3")
_index = itertools.count()


def put(id, start, end, *, seen=(), need=2, result=OK, mode="strict", holders=("n1", "n2"),
        key="k", final=False, hints=(), fence=("", 0)):
    return Op(next(_index), 0, "put", key, "n1", start, end, need, f"W={need}", result, id,
              tuple(seen), (), mode, mode != "sloppy", holders if result == OK else (),
              hint_holders=tuple(hints), lock=fence[0], token=fence[1])


def delete(id, start, end, *, seen=(), need=2, result=OK, mode="strict", key="k",
           fence=("", 0)):
    return Op(next(_index), 0, "delete", key, "n1", start, end, need, f"W={need}", result, id,
              tuple(seen), (), mode, mode != "sloppy", ("n1", "n2") if result == OK else (),
              lock=fence[0], token=fence[1])


def get(returned, start, end, *, need=2, result=OK, key="k", final=False, error=""):
    return Op(next(_index), 1, "get", key, "n2", start, end, need, f"R={need}", result,
              returned=tuple(returned), final=final, error=error)


def history(ops, final_ids, *, copies=None, losses=(), refusals=(), key="k"):
    """A history whose replicas all hold `final_ids` (or the given per-node copies)."""
    if copies is None:
        copies = {n: Copy(repr(sorted(final_ids)), tuple(final_ids)) for n in REPLICAS}
    finals = [get(final_ids, 1000, 1001, need=3, final=True, key=key) for _ in REPLICAS]
    return History(n=3, replicas={key: REPLICAS}, ops=[*ops, *finals], losses=list(losses),
                   refusals=list(refusals), final={key: copies})


def invariants(h: History) -> list[str]:
    return sorted({v.invariant for v in check(h).violations})


def test_a_correct_history_with_siblings_deletes_and_re_creates_passes() -> None:
    ops = [
        put("w1", 0, 10),
        put("w2", 5, 15, mode="sloppy"),               # concurrent: a sibling
        get(["w1", "w2"], 20, 25),
        put("w3", 26, 30, seen=["w1", "w2"]),          # read-modify-write supersedes both
        get(["w3"], 31, 35),
        delete("d4", 40, 45, seen=["w3"]),
        get([], 46, 50),
        put("w5", 60, 70),                             # re-created after the delete
        put("w6", 65, 75, mode="default", result=UNKNOWN),  # may or may not have applied
        get(["w5", "w6"], 80, 85),
    ]
    report = check(history(ops, ["w5", "w6"]))
    assert report.ok, [v.describe() for v in report.violations]
    assert report.ryw_pairs > 0


def test_an_acknowledged_write_missing_from_the_final_value_is_lost() -> None:
    h = history([put("w1", 0, 10, mode="sloppy"), put("w2", 20, 30)], ["w2"])
    [v] = check(h).violations
    assert v.invariant == "lost_write" and v.ids == ("w1",)
    # a strict write: the final reads at ALL miss it too
    strict = history([put("w1", 0, 10), put("w2", 20, 30)], ["w2"])
    assert invariants(strict) == ["lost_write", "read_your_writes"]


def test_a_write_seen_by_a_write_that_may_have_applied_is_not_lost() -> None:
    ops = [put("w1", 0, 10), put("w2", 20, 30, seen=["w1"], result=UNKNOWN)]
    assert check(history(ops, [])).ok is False  # w2 is not in the final value either...
    assert invariants(history(ops, [])) == ["read_your_writes"]  # ...the final read misses w1
    assert check(history(ops, ["w2"])).ok


def test_a_write_seen_only_by_a_write_that_certainly_failed_is_lost() -> None:
    ops = [put("w1", 0, 10), put("w2", 20, 30, seen=["w1"], result=FAILED)]
    assert "lost_write" in invariants(history(ops, []))


def test_a_write_lost_because_every_holder_lost_its_data_is_exempt() -> None:
    ops = [put("w1", 0, 10, holders=("n1", "n2"), mode="sloppy")]
    losses = [Loss(50, "n1", "disk_loss"), Loss(60, "n2", "record_loss", "k")]
    report = check(history(ops, [], losses=losses))
    assert report.ok and report.lost_exempt == [ops[0].index]
    # one holder kept it: then it must survive
    partial = check(history(ops, [], losses=losses[:1]))
    assert [v.invariant for v in partial.violations] == ["lost_write"]
    # a loss before the write started does not excuse it
    early = check(history(ops, [], losses=[Loss(-5, "n1", "disk_loss"), losses[1]]))
    assert [v.invariant for v in early.violations] == ["lost_write"]


def test_what_an_acknowledged_delete_saw_must_not_come_back() -> None:
    ops = [put("w1", 0, 10, mode="sloppy"), delete("d2", 20, 30, seen=["w1"], mode="sloppy")]
    assert invariants(history(ops, ["w1"])) == ["resurrection"]
    # a delete with an unknown outcome may not have happened
    unsure = [ops[0], delete("d2", 20, 30, seen=["w1"], result=UNKNOWN)]
    assert check(history(unsure, ["w1"])).ok


def test_a_superseded_write_next_to_its_successor_is_a_false_sibling() -> None:
    ops = [put("w1", 0, 10, mode="sloppy"), put("w2", 20, 30, seen=["w1"], mode="sloppy"),
           put("w3", 40, 50, seen=["w2"], mode="sloppy"), get(["w1", "w3"], 60, 70)]
    report = check(history(ops, ["w3"]))
    assert [v.invariant for v in report.violations] == ["siblings"]
    assert set(report.violations[0].ids) == {"w1", "w3"}  # transitively: w3 saw w2 saw w1


def test_one_write_twice_among_the_siblings_is_caught() -> None:
    ops = [put("w1", 0, 10), get(["w1", "w1"], 20, 30)]
    assert invariants(history(ops, ["w1"])) == ["siblings"]
    copies = {n: Copy("same", ("w1", "w1")) for n in REPLICAS}
    bad = history([put("w1", 0, 10)], ["w1"], copies=copies)
    assert "siblings" in invariants(bad)


def test_read_your_writes_with_a_strict_quorum() -> None:
    w = put("w1", 0, 10, need=2)
    stale = get([], 20, 30, need=2)
    assert invariants(history([w, stale], ["w1"])) == ["read_your_writes"]
    # R + W <= N promises nothing
    assert check(history([w, get([], 20, 30, need=1)], ["w1"])).ok
    # a read that started before the ack promises nothing
    assert check(history([w, get([], 5, 30, need=2)], ["w1"])).ok
    # sloppy writes (hints counted) are not checked
    sloppy = put("w1", 0, 10, need=2, mode="sloppy")
    assert check(history([sloppy, get([], 20, 30, need=2)], ["w1"])).ok
    # a data loss on a replica in between exempts the pair
    report = check(history([w, stale], ["w1"], losses=[Loss(15, "n3", "corrupt", "k")]))
    assert report.ok and report.ryw_exempt == report.ryw_pairs == 4  # incl. 3 final reads


def test_a_successor_or_a_delete_that_saw_it_satisfies_read_your_writes() -> None:
    w = put("w1", 0, 10)
    later = put("w2", 12, 14, seen=["w1"], mode="sloppy")
    assert check(history([w, later, get(["w2"], 20, 30)], ["w2"])).ok
    gone = delete("d2", 12, 14, seen=["w1"], result=UNKNOWN)
    assert check(history([w, gone, get([], 20, 30)], [])).ok


def test_a_read_after_a_strict_delete_must_not_return_what_it_saw() -> None:
    ops = [put("w1", 0, 10, mode="sloppy"), delete("d2", 20, 30, seen=["w1"]),
           get(["w1"], 40, 50, need=2)]
    assert invariants(history(ops, [])) == ["read_your_writes"]


def test_replicas_that_disagree_after_repair_do_not_converge() -> None:
    copies = {"n1": Copy("a", ("w1",)), "n2": Copy("a", ("w1",)), "n3": Copy("b", ())}
    assert invariants(history([put("w1", 0, 10)], ["w1"], copies=copies)) == ["convergence"]


def test_final_reads_must_succeed_and_match_the_replicas() -> None:
    ops = [put("w1", 0, 10)]
    h = history(ops, ["w1"])
    h.ops[-1] = get([], 1000, 1001, need=3, final=True)
    assert "final_read" in invariants(h)
    h.ops[-1] = get([], 1000, 1001, need=3, final=True, result=FAILED, error="R=3 needs 3")
    assert "final_read" in invariants(h)


def test_the_guard_must_not_refuse_a_live_version() -> None:
    ops = [put("w1", 0, 10), put("w2", 20, 30, seen=["w1"])]
    live = Refusal(40, "n3", "k", ("w2",))
    superseded = Refusal(40, "n3", "k", ("w1",))
    assert invariants(history(ops, ["w2"], refusals=[live])) == ["guard"]
    report = check(history(ops, ["w2"], refusals=[superseded, superseded]))
    assert report.ok and report.refused_superseded == 2
    # refused while it was still live: a later successor does not excuse it
    early = Refusal(15, "n3", "k", ("w1",))
    assert invariants(history(ops, ["w2"], refusals=[early])) == ["guard"]
    # seen by a write that never took effect: it is still live at the end
    unsure = [put("w1", 0, 10), put("w2", 20, 30, seen=["w1"], result=UNKNOWN)]
    assert invariants(history(unsure, ["w1"], refusals=[superseded])) == ["guard"]


def test_values_nobody_wrote_are_phantoms() -> None:
    assert invariants(history([get(["zz"], 0, 5)], [])) == ["phantom"]
    failed = put("w1", 0, 10, result=FAILED)
    assert invariants(history([failed, get(["w1"], 20, 30)], [])) == ["phantom"]
    future = put("w2", 50, 60, mode="sloppy")
    assert invariants(history([get(["w2"], 20, 30), future], ["w2"])) == ["phantom"]


def test_internal_errors_are_reported() -> None:
    bad = Op(next(_index), 0, "put", "k", "n1", 0, 10, 2, "W=2", UNKNOWN, "w1",
             error="internal error: KeyError('x')")
    assert "internal_error" in invariants(history([bad], []))


def test_the_checker_knows_nothing_of_dots_or_actor_names() -> None:
    """Signatures are opaque: a store that renames actors (n2 -> n2.7) checks the same."""
    copies = {n: Copy("[('n2.7', 1, False, b'w1')]", ("w1",)) for n in REPLICAS}
    assert check(history([put("w1", 0, 10)], ["w1"], copies=copies)).ok


def test_a_hint_dropped_undelivered_counts_as_its_fallback_losing_the_write() -> None:
    ops = [put("w1", 0, 10, holders=("n1", "n4"), hints=("n4",), mode="sloppy")]
    losses = [Loss(50, "n1", "disk_loss"), Loss(60, "n4", "hint_expired", "k")]
    report = check(history(ops, [], losses=losses))
    assert report.ok and report.lost_exempt == [ops[0].index]
    other_key = [losses[0], Loss(60, "n4", "hint_expired", "other")]
    assert invariants(history(ops, [], losses=other_key)) == ["lost_write"]
    # a replica dropping a hint it kept for another owner still holds its own record
    replica = [put("w1", 0, 10, holders=("n1", "n2"), mode="sloppy")]
    hint_on_replica = [losses[0], Loss(60, "n2", "hint_expired", "k")]
    assert invariants(history(replica, [], losses=hint_on_replica)) == ["lost_write"]
    # ... and its hint drop does not excuse a stale read either
    w, stale = put("w1", 0, 10), get([], 20, 30)
    dropped = [Loss(15, "n3", "hint_expired", "k")]
    assert invariants(history([w, stale], ["w1"], losses=dropped)) == ["read_your_writes"]


# --- fencing -------------------------------------------------------------------------------


def fenced_copies(shown, hidden=()):
    return {n: Copy(repr(sorted([*shown, *hidden])), tuple(shown), tuple(hidden))
            for n in REPLICAS}


def test_a_stale_guarded_write_hidden_by_a_newer_token_is_correct() -> None:
    ops = [
        put("w1", 0, 10, fence=("L", 5), need=1),      # the stale holder, acknowledged
        put("w2", 5, 15, fence=("L", 7)),              # the new holder, concurrently
        get(["w2"], 20, 25, need=2),                   # w1 is fenced out: not read
        put("w3", 30, 40, seen=["w2"]),                # an unguarded write knows L:7
        put("w4", 35, 45, fence=("L", 6), result=UNKNOWN),  # refused, or hidden
    ]
    report = check(history(ops, ["w3"], copies=fenced_copies(["w3"], ["w1", "w4"])))
    assert report.ok, [v.describe() for v in report.violations]
    assert report.fenced_exempt >= 1  # w1 is neither lost nor a read-your-writes failure


def test_a_lower_token_shown_beside_a_higher_one_is_caught() -> None:
    ops = [put("w1", 0, 10, fence=("L", 5)), put("w2", 5, 15, fence=("L", 7))]
    assert invariants(history(ops, ["w1", "w2"])) == ["fencing"]
    # beside an unguarded write that knew the higher token: caught as well
    ops = [put("w1", 0, 10, fence=("L", 5)), put("w2", 5, 15, fence=("L", 7)),
           put("w3", 20, 30, seen=["w2"])]
    assert invariants(history(ops, ["w1", "w3"])) == ["fencing"]
    # other locks and unguarded writes are not fenced
    ops = [put("w1", 0, 10, fence=("L", 5)), put("w2", 5, 15, fence=("M", 7)),
           put("w3", 6, 16)]
    assert check(history(ops, ["w1", "w2", "w3"])).ok


def test_a_lower_token_that_superseded_a_higher_one_is_caught() -> None:
    ops = [put("w1", 0, 10, fence=("L", 7)), get(["w1"], 11, 12),
           put("w2", 20, 30, seen=["w1"], fence=("L", 5))]
    [v] = check(history(ops, ["w2"])).violations
    assert v.invariant == "fencing" and "lower token won" in v.message
    # of unknown outcome and never seen anywhere: it may have been refused, not judged
    ops = [put("w1", 0, 10, fence=("L", 7)), get(["w1"], 11, 12),
           put("w2", 20, 30, seen=["w1"], fence=("L", 5), result=UNKNOWN)]
    assert check(history(ops, ["w1"])).ok


def test_a_version_hidden_without_a_higher_token_is_caught() -> None:
    ops = [put("w1", 0, 10, fence=("L", 5)), put("w2", 5, 15)]
    found = invariants(history(ops, ["w2"], copies=fenced_copies(["w2"], ["w1"])))
    assert "fencing" in found
    # hidden by a guarded delete that knew a higher token: fine
    ops = [put("w1", 0, 10, fence=("L", 5)), delete("d2", 5, 15, fence=("L", 7))]
    assert check(history(ops, [], copies=fenced_copies([], ["w1"]))).ok


def test_a_write_superseded_by_a_write_then_fenced_out_stays_superseded() -> None:
    ops = [
        put("w1", 0, 10),                                    # acknowledged, unguarded
        get(["w1"], 11, 12),
        put("w2", 20, 30, seen=["w1"], fence=("L", 5)),      # saw it: supersedes it
        put("w3", 25, 35, fence=("L", 7)),                   # the newer token, blind
        get(["w3"], 40, 45, need=2),                          # neither w1 nor w2 shown
    ]
    report = check(history(ops, ["w3"], copies=fenced_copies(["w3"], ["w2"])))
    assert report.ok, [v.describe() for v in report.violations]
    # without the fence on w3 the same read would be stale
    ops[3] = put("w3", 25, 35)
    assert "read_your_writes" in invariants(history(ops, ["w3"], copies=fenced_copies(
        ["w2", "w3"])))
