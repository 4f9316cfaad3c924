"""The pure saga engine (kvstore/core/saga.py): the schema with field paths, the log
protocol, and the next action for every log a coordinator can leave behind."""

from __future__ import annotations

import itertools
import json

import pytest

from kvstore.core import saga as engine
from kvstore.core.saga import Append, Execute, Finished, LogEntry, LogError, SagaSchemaError


def step(key: str, value: str = "v", **extra) -> dict:
    return {"op": "put", "key": key, "value": value, **extra,
            "compensation": {"op": "delete", "key": key}}


THREE = engine.parse_saga({"name": "t", "steps": [step("a"), step("b", if_value="1"),
                                                  step("c", if_absent=True)]})


def drive(defn, outcomes):
    """Run the engine to its end: `outcomes[i]` says whether step i's action applies.
    Returns the log."""
    log: list[LogEntry] = []
    for _ in range(200):
        action = engine.next_action(defn, log)
        if isinstance(action, Finished):
            return log
        if isinstance(action, Append):
            log.append(action.entry)
        else:
            applied = True if action.compensate else outcomes[action.step]
            log.append(engine.after_execute(action, applied))
        engine.validate_log(defn, log)
    raise AssertionError("the engine did not finish")


@pytest.mark.parametrize(("text", "field"), [
    ("[]", "(top level)"),
    ('{"steps": []}', "steps"),
    ('{"steps": [], "extra": 1}', "extra"),
    ('{"steps": [{"op": "put", "key": "k", "value": "v"}]}', "steps[0].compensation"),
    ('{"steps": [{"op": "patch", "key": "k"}]}', "steps[0].op"),
    ('{"steps": [{"op": "put", "key": "", "value": "v"}]}', "steps[0].key"),
    ('{"steps": [{"op": "put", "key": "k"}]}', "steps[0].value"),
    ('{"steps": [{"op": "delete", "key": "k", "value": "v"}]}', "steps[0].value"),
    ('{"steps": [{"op": "put", "key": "k", "value": "v", "if_absent": 1}]}',
     "steps[0].if_absent"),
    ('{"steps": [{"op": "put", "key": "k", "value": "v", "if_absent": true, '
     '"if_value": "x", "compensation": {"op": "delete", "key": "k"}}]}', "steps[0].if_value"),
    ('{"steps": [{"op": "put", "key": "k", "value": "v", "compensation": '
     '{"op": "put", "key": "k"}}]}', "steps[0].compensation.value"),
    ('{"steps": [{"op": "put", "key": "k", "value": "v", "compensation": '
     '{"op": "delete", "key": "k", "if_absent": true}}]}', "steps[0].compensation.if_absent"),
    ('{"steps": [{"op": "put", "key": "k", "value": "v", "typo": 1}]}', "steps[0].typo"),
])
def test_schema_errors_name_the_field(text: str, field: str) -> None:
    with pytest.raises(SagaSchemaError) as err:
        engine.parse_saga(json.loads(text))
    assert err.value.path == field, str(err.value)


def test_bounds_and_round_trip() -> None:
    too_many = {"steps": [step(f"k{i}") for i in range(engine.MAX_STEPS + 1)]}
    with pytest.raises(SagaSchemaError, match="at most 64"):
        engine.parse_saga(too_many)
    with pytest.raises(SagaSchemaError, match=r"steps\[0\]\.value: longer than"):
        engine.parse_saga({"steps": [step("k", "x" * 5000)]})
    assert engine.parse_saga(json.loads(THREE.encode())) == THREE


def test_all_steps_apply_then_commit() -> None:
    log = drive(THREE, [True, True, True])
    assert [(e.kind, e.step) for e in log] == [
        ("start", 0), ("done", 0), ("start", 1), ("done", 1), ("start", 2), ("done", 2),
        ("end", -1)]
    assert log[-1].outcome == engine.COMMITTED
    assert engine.status(THREE, log).state == engine.COMMITTED


def test_a_failed_condition_compensates_started_steps_latest_first() -> None:
    log = drive(THREE, [True, True, False])
    kinds = [(e.kind, e.step) for e in log]
    # step 2's condition was false: it was not applied, so it is not undone either
    assert kinds[4:] == [("start", 2), ("failed", 2), ("comp", 1), ("undone", 1), ("comp", 0),
                         ("undone", 0), ("end", -1)]
    st = engine.status(THREE, log)
    assert st.state == engine.COMPENSATED and st.failed_step == 2 and st.undone == (1, 0)


def test_a_step_the_store_kept_failing_is_compensated_too() -> None:
    log = [LogEntry("start", 0), LogEntry("done", 0), LogEntry("start", 1)]
    log.append(engine.abort_entry(THREE, log, "unavailable"))
    assert log[-1].unknown  # it may have been applied
    assert engine.next_action(THREE, log) == Append(LogEntry("comp", 1))


def test_a_first_step_whose_condition_fails_compensates_nothing() -> None:
    log = drive(THREE, [False, True, True])
    assert [(e.kind, e.step) for e in log] == [("start", 0), ("failed", 0), ("end", -1)]
    assert log[-1].outcome == engine.COMPENSATED


def test_every_prefix_of_a_log_resumes_to_the_same_end() -> None:
    """A coordinator that dies after any entry is replaced by one that, from that prefix,
    reaches the same outcome, and the combined log stays valid."""
    for outcomes in itertools.product([True, False], repeat=3):
        full = drive(THREE, list(outcomes))
        for cut in range(len(full) + 1):
            prefix = full[:cut]
            resumed = list(prefix)
            while not isinstance(a := engine.next_action(THREE, resumed), Finished):
                if isinstance(a, Append):
                    resumed.append(a.entry)
                else:
                    ok = True if a.compensate else outcomes[a.step]
                    resumed.append(engine.after_execute(a, ok))
            assert resumed == full, (outcomes, cut)


def test_an_in_flight_step_is_executed_again_and_its_compensation_too() -> None:
    log = [LogEntry("start", 0)]
    assert engine.next_action(THREE, log) == Execute(0, THREE.steps[0].action, False)
    assert engine.status(THREE, log).in_flight == 0
    log += [LogEntry("failed", 0, reason="refused", unknown=True), LogEntry("comp", 0)]
    assert engine.next_action(THREE, log) == Execute(0, THREE.steps[0].compensation, True)
    assert engine.abort_entry(THREE, [LogEntry("start", 0)], "down").kind == "failed"


@pytest.mark.parametrize("entries", [
    [("done", 0)],                                   # done without start
    [("start", 1)],                                  # out of order
    [("start", 0), ("start", 1)],                    # next before the previous is done
    [("start", 0), ("done", 0), ("done", 0)],        # twice
    [("start", 0), ("done", 0), ("failed", 0)],      # a done step cannot fail
    [("start", 0), ("comp", 0)],                     # compensation without a failure
    [("start", 0), ("failed", 0), ("undone", 0)],    # undone without comp
    [("start", 0), ("failed", 0), ("start", 1)],     # forward after the failure
    [("start", 0), ("done", 0), ("end", "COMMITTED")],  # committed with steps missing
    [("start", 0), ("done", 0), ("start", 1), ("failed", 1),
     ("end", "COMPENSATED")],                        # step 0 not undone
    [("start", 0), ("failed", 0), ("comp", 0)],      # a step that failed its condition
    [("start", 7)],                                  # no such step
])
def test_impossible_logs_are_refused(entries) -> None:
    log = [LogEntry("end", outcome=s) if k == "end" else LogEntry(k, s) for k, s in entries]
    with pytest.raises(LogError):
        engine.next_action(THREE, log)


def test_entries_encode_and_decode() -> None:
    e = LogEntry("failed", 1, reason="b is '2', not '1'", at_ms=5, by="c1", unknown=True)
    assert LogEntry.decode(e.encode()) == e
    with pytest.raises(LogError):
        LogEntry.decode('{"e": "bogus"}')
