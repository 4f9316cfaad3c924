"""Sagas (issue 12): the coordinator that drives the pure engine (kvstore/core/saga.py) -
the saga log in the Raft group through the metadata client, the steps on the replicated
store through the data client. Async (`AsyncSagaClient`) and blocking (`SagaClient`).

Layout in the metadata namespace (docs/transactions.md, "Sagas"):

    saga/<id>/def          the definition (JSON), written once (compare-and-set absent)
    saga/<id>/log/<n>      log entry n (JSON; n zero-padded), each appended with a
                           compare-and-set on its absence: two coordinators can never both
                           append entry n

Ownership: a coordinator holds the lock `saga/<id>` under a lease (`ttl` seconds, kept
alive while it runs) and writes every step with the lock's fencing token, so once a newer
coordinator holds the lock the replicas refuse the old one's late writes (and never let
them win a merge). A coordinator that dies stops keeping its lease alive; `resume` queues
for the lock and gets it at most `ttl` (plus the lease bound of docs/coordination.md)
after the death, reads the log and continues from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kvstore.client.core import AsyncClient, Credentials
from kvstore.client.meta import AsyncMetaClient, CompareFailed, LeaseNotFound
from kvstore.core import saga as engine
from kvstore.core import versions
from kvstore.core.errors import Fenced, InvalidArgument, KVError

__all__ = [
    "AsyncSagaClient", "ClientStore", "SagaClient", "SagaConflict", "SagaNotFound",
    "SagaRecord", "SagaStore", "load_saga_file",
]

PREFIX = "saga/"
ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class SagaNotFound(KVError):
    """No saga with that id in the log."""


class SagaConflict(KVError):
    """Another coordinator drives this saga now (it appended to the log, or holds the lock
    with a newer token): this one stopped without writing anything more."""


def load_saga_file(text: str) -> engine.SagaDef:
    """Parse a saga file; InvalidArgument naming the field (or the JSON error's place)."""
    import json

    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"the saga file is not JSON: {exc}") from None
    try:
        return engine.parse_saga(raw)
    except engine.SagaSchemaError as exc:
        raise InvalidArgument(f"bad saga file: {exc}") from None


class SagaStore(Protocol):
    """The replicated store as a saga sees it (the data client, or a simulated cluster)."""

    async def read(self, key: str) -> tuple[list[str], bytes]:
        """The key's live values (empty: absent) and its causal context."""

    async def write(self, key: str, value: str | None, context: bytes,
                    fence: tuple[str, int]) -> None:
        """Put `value` (None: delete) superseding `context`, guarded by `fence`; raises
        Fenced if a replica knows a newer token of the lock."""


class ClientStore:
    """SagaStore over the data client: QUORUM reads and strict QUORUM writes."""

    def __init__(self, client: AsyncClient, consistency: str = "QUORUM") -> None:
        self.client = client
        self.consistency = consistency

    async def read(self, key: str) -> tuple[list[str], bytes]:
        got = await self.client.get(key, consistency=self.consistency)
        live = sorted(v.value.decode("utf-8", "replace") for v in got.siblings
                      if not v.tombstone and not v.fenced_out)
        return live, got.context

    async def write(self, key: str, value: str | None, context: bytes,
                    fence: tuple[str, int]) -> None:
        if value is None:
            await self.client.delete(key, context=context, consistency=self.consistency,
                                     strict=True, fence=fence)
        else:
            await self.client.put(key, value, context=context, consistency=self.consistency,
                                  strict=True, fence=fence)


@dataclass
class SagaRecord:
    """A saga as the log holds it: its definition, its log, and the status they give."""

    saga_id: str
    definition: engine.SagaDef
    log: list[engine.LogEntry]

    @property
    def status(self) -> engine.SagaStatus:
        return engine.status(self.definition, self.log)

    def to_json(self, *, full: bool = True) -> dict:
        out = {"id": self.saga_id, "name": self.definition.name, **self.status.to_json()}
        if full:
            out["definition"] = self.definition.to_json()
            out["log"] = [e.to_json() for e in self.log]
        return out


@dataclass
class RunStats:
    """What one run did: meta round trips (log appends and reads), store round trips,
    seconds spent, steps applied and compensations applied by this coordinator."""

    meta_calls: int = 0
    store_calls: int = 0
    seconds: float = 0.0
    executed: int = 0
    compensated: int = 0

    def to_json(self) -> dict:
        return {"meta_round_trips": self.meta_calls, "store_round_trips": self.store_calls,
                "seconds": round(self.seconds, 4), "steps_applied": self.executed,
                "compensations_applied": self.compensated}


def _log_key(saga_id: str, n: int) -> str:
    return f"{PREFIX}{saga_id}/log/{n:06d}"


class AsyncSagaClient:
    """Runs, resumes and reads sagas. `meta` and `store` are the two halves of the cluster
    (the Raft group and the replicated store); `ttl` the coordinator lease; `retries`
    how often a forward step is retried when the store cannot apply it before the saga
    compensates; `clock_ms` and `new_id` are injectable for simulation."""

    def __init__(self, meta: AsyncMetaClient, store: SagaStore, *, ttl: float = 5.0,
                 retries: int = 3, backoff: float = 0.2, owner: str = "",
                 clock_ms: Callable[[], int] | None = None,
                 new_id: Callable[[str], str] | None = None) -> None:
        assert ttl > 0 and retries >= 0
        self.meta = meta
        self.store = store
        self.ttl = ttl
        self.retries = retries
        self.backoff = backoff
        self.owner = owner or f"coordinator-{secrets.token_hex(3)}"
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.new_id = new_id or (lambda name: f"{_slug(name)}-{secrets.token_hex(4)}")
        self.stats = RunStats()
        # test hook: called before every action with (saga_id, log length, action); the
        # simulation crashes the coordinator from it
        self.before_action: Callable[[str, int, engine.Action], None] | None = None

    # ---- reading ---------------------------------------------------------------------------

    async def get(self, saga_id: str) -> SagaRecord:
        """The saga's definition and log (one linearizable read)."""
        _check_id(saga_id)
        keys, _rev = await self.meta.range(f"{PREFIX}{saga_id}/")
        self.stats.meta_calls += 1
        return _record(saga_id, {k.key: k.value for k in keys})

    async def list(self) -> list[SagaRecord]:
        keys, _rev = await self.meta.range(PREFIX)
        by_id: dict[str, dict[str, str]] = {}
        for k in keys:
            saga_id = k.key[len(PREFIX):].split("/", 1)[0]
            by_id.setdefault(saga_id, {})[k.key] = k.value
        out = []
        for saga_id, values in sorted(by_id.items()):
            with contextlib.suppress(SagaNotFound):  # a def not yet written: not a saga yet
                out.append(_record(saga_id, values))
        return out

    # ---- running ---------------------------------------------------------------------------

    async def run(self, definition: engine.SagaDef, saga_id: str | None = None,
                  *, wait: float | None = None) -> SagaRecord:
        """Record `definition` under a new id, then drive it to its end: COMMITTED, or
        COMPENSATED when a step's condition failed."""
        saga_id = saga_id or self.new_id(definition.name)
        _check_id(saga_id)
        try:
            await self.meta.cas(f"{PREFIX}{saga_id}/def", None, definition.encode())
        except CompareFailed as exc:
            if exc.current is None or exc.current.value != definition.encode():
                raise InvalidArgument(f"saga {saga_id!r} exists already") from None
            # our own earlier attempt wrote it (a retried run): go on from the log
        self.stats.meta_calls += 1
        return await self._drive(saga_id, definition, wait)

    async def resume(self, saga_id: str, *, wait: float | None = None) -> SagaRecord:
        """Take over a saga whose coordinator died: wait for its lease to end (at most
        `wait` seconds, default the lease TTL plus its bound), then go on from the log."""
        record = await self.get(saga_id)
        if record.status.state in (engine.COMMITTED, engine.COMPENSATED):
            return record
        return await self._drive(saga_id, record.definition, wait)

    async def _drive(self, saga_id: str, defn: engine.SagaDef,
                     wait: float | None) -> SagaRecord:
        loop = asyncio.get_running_loop()
        began = loop.time()
        lease = (await self.meta.lease_grant(self.ttl)).id
        lost, stop = asyncio.Event(), asyncio.Event()
        keeper = asyncio.ensure_future(self._keepalive(lease, lost, stop))
        try:
            try:
                token = await self.meta.lock(f"{PREFIX}{saga_id}", lease,
                                             wait=self.ttl * 3 + 5 if wait is None else wait)
            except TimeoutError:
                raise SagaConflict(f"saga {saga_id}: another coordinator holds its lock and "
                                   "keeps its lease alive (it is still running); if it is "
                                   "dead, its lease ends within its TTL: retry") from None
            except LeaseNotFound:  # paused past the lease before the lock was granted
                raise SagaConflict(f"saga {saga_id}: this coordinator's lease ended before "
                                   f"it got the saga's lock; run `kv saga resume {saga_id}`"
                                   ) from None
            self.stats.meta_calls += 2
            record = await self.get(saga_id)  # read after the lock: the latest log
            log = record.log
            fence = (f"{PREFIX}{saga_id}", token)
            inherited = self._in_flight(defn, log)
            while True:
                if lost.is_set():
                    raise SagaConflict(f"saga {saga_id}: this coordinator's lease ended; "
                                       f"run `kv saga resume {saga_id}`")
                action = engine.next_action(defn, log)
                if self.before_action is not None:
                    self.before_action(saga_id, len(log), action)
                if isinstance(action, engine.Finished):
                    break
                if isinstance(action, engine.Append):
                    await self._append(saga_id, log, action.entry)
                    continue
                applied, reason = await self._execute(saga_id, action, fence,
                                                      resumed=action.step == inherited)
                if applied is None:  # the store kept refusing a forward step: compensate
                    entry = engine.abort_entry(defn, log, reason)
                else:
                    entry = engine.after_execute(action, applied, reason)
                await self._append(saga_id, log, entry)
                engine.validate_log(defn, log)  # the engine's own entries obey the protocol
            return SagaRecord(saga_id, defn, log)
        finally:
            self.stats.seconds += loop.time() - began
            # `stop` as well as cancel: Python 3.11's wait_for can swallow a cancellation
            # that arrives as its call completes (fixed in 3.12); the keeper then sees
            # `stop` at its next turn instead of renewing the lease for ever
            stop.set()
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            # releases the lock at once; a coordinator that dies skips this and its lease
            # runs out instead
            with contextlib.suppress(KVError, TimeoutError):
                await self.meta.lease_revoke(lease)

    @staticmethod
    def _in_flight(defn: engine.SagaDef, log: list[engine.LogEntry]) -> int | None:
        """A forward step a dead coordinator started and never finished (its outcome is
        unknown), if any."""
        st = engine.status(defn, log)
        return st.in_flight if st.state == engine.RUNNING else None

    async def _keepalive(self, lease: int, lost: asyncio.Event, stop: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            if stop.is_set():
                return
            try:
                await self.meta.lease_keepalive(lease)
            except LeaseNotFound:
                lost.set()
                return
            except (KVError, TimeoutError):
                continue  # the next one may get through; the lease has a margin

    async def _append(self, saga_id: str, log: list[engine.LogEntry],
                      entry: engine.LogEntry) -> None:
        entry = dataclasses.replace(entry, at_ms=self.clock_ms(), by=self.owner)
        key = _log_key(saga_id, len(log))
        try:
            await self.meta.cas(key, None, entry.encode())
        except CompareFailed:
            raise SagaConflict(f"saga {saga_id}: another coordinator appended log entry "
                               f"{len(log)}; this one stopped") from None
        finally:
            self.stats.meta_calls += 1
        log.append(entry)

    async def _execute(self, saga_id: str, action: engine.Execute, fence: tuple[str, int],
                       *, resumed: bool) -> tuple[bool | None, str]:
        """Apply one step or compensation: (True, "") applied, (False, why) a condition
        failed, (None, why) the store kept failing a forward step. A compensation is
        retried until it applies (or raises, leaving the saga to a resume)."""
        op = action.op
        attempt = 0
        while True:
            try:
                values, context = await self.store.read(op.key)
                self.stats.store_calls += 1
                target = [] if op.kind == "delete" else [op.value]
                if (resumed or attempt) and not action.compensate and values == target:
                    # a dead coordinator's write of this step, or this one's write whose
                    # answer was lost (a timeout), is in place already: not a failed
                    # condition, so no compensation for it
                    self.stats.executed += 1
                    return True, ""
                why = _condition(op, values, context)
                if why:
                    return False, why
                await self.store.write(op.key, op.value, context, fence)
                self.stats.store_calls += 1
                if action.compensate:
                    self.stats.compensated += 1
                else:
                    self.stats.executed += 1
                return True, ""
            except Fenced:
                raise SagaConflict(f"saga {saga_id}: a newer coordinator holds the saga's "
                                   f"lock; this one's write to {op.key!r} was refused") from None
            except (KVError, TimeoutError) as exc:
                if isinstance(exc, InvalidArgument):
                    raise
                attempt += 1
                reason = f"{op.describe()}: {getattr(exc, 'message', None) or exc}"
                if not action.compensate and attempt > self.retries:
                    return None, reason
                if action.compensate and attempt > self.retries * 3:
                    raise KVError(f"saga {saga_id}: compensation of step {action.step} "
                                  f"failed ({reason}); the saga is COMPENSATING: run "
                                  f"`kv saga resume {saga_id}` when the store is back") from None
                await asyncio.sleep(self.backoff * attempt)


def _condition(op: engine.Op, values: list[str], context: bytes) -> str:
    """Why the op's condition does not hold ("" if it does, or has none)."""
    if op.if_value is not None and values != [op.if_value]:
        return f"{op.key} is {_show(values)}, not {op.if_value!r}"
    if op.if_absent and values:
        return f"{op.key} is {_show(values)}, not absent"
    if op.if_context is not None:
        try:
            wanted = versions.context_from_text(op.if_context)
        except versions.InvalidContext as exc:
            return f"{op.key}: bad if_context ({exc})"
        if wanted != context:
            return f"{op.key} was written since the given context"
    return ""


def _show(values: list[str]) -> str:
    if not values:
        return "absent"
    return repr(values[0]) if len(values) == 1 else f"{len(values)} siblings {values!r}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:40] or "saga"


def _check_id(saga_id: str) -> None:
    if not ID_RE.match(saga_id):
        raise InvalidArgument(f"bad saga id {saga_id!r}: 1-64 of A-Z a-z 0-9 . _ -")


def _record(saga_id: str, values: dict[str, str]) -> SagaRecord:
    import json

    raw = values.get(f"{PREFIX}{saga_id}/def")
    if raw is None:
        raise SagaNotFound(f"no saga {saga_id!r} (see `kv saga list`)")
    try:
        defn = engine.parse_saga(json.loads(raw))
    except (ValueError, engine.SagaSchemaError) as exc:
        raise KVError(f"saga {saga_id}: its stored definition is unreadable: {exc}") from None
    prefix = f"{PREFIX}{saga_id}/log/"
    entries = sorted((k, v) for k, v in values.items() if k.startswith(prefix))
    for n, (k, _v) in enumerate(entries):
        if k != _log_key(saga_id, n):
            raise KVError(f"saga {saga_id}: its log has a gap before {k}")
    log = [engine.LogEntry.decode(v) for _k, v in entries]
    try:
        engine.validate_log(defn, log)
    except engine.LogError as exc:
        raise KVError(f"saga {saga_id}: {exc}") from None
    return SagaRecord(saga_id, defn, log)


class SagaClient:
    """Blocking sagas for scripts and the CLI (a private event loop)."""

    def __init__(self, endpoints: str | Sequence[str], *, timeout: float = 5.0,
                 credentials: Credentials | None = None, ttl: float = 5.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._timeout = timeout
        self._endpoints = endpoints
        self._credentials = credentials
        self._ttl = ttl
        self._async = self._loop.run_until_complete(self._make())

    async def _make(self) -> AsyncSagaClient:
        meta = AsyncMetaClient(self._endpoints, timeout=self._timeout,
                               credentials=self._credentials)
        data = AsyncClient(self._endpoints, timeout=self._timeout,
                           credentials=self._credentials)
        return AsyncSagaClient(meta, ClientStore(data), ttl=self._ttl)

    @property
    def async_client(self) -> AsyncSagaClient:
        return self._async

    def run(self, definition: engine.SagaDef, saga_id: str | None = None) -> SagaRecord:
        return self._loop.run_until_complete(self._async.run(definition, saga_id))

    def resume(self, saga_id: str, *, wait: float | None = None) -> SagaRecord:
        return self._loop.run_until_complete(self._async.resume(saga_id, wait=wait))

    def get(self, saga_id: str) -> SagaRecord:
        return self._loop.run_until_complete(self._async.get(saga_id))

    def list(self) -> list[SagaRecord]:
        return self._loop.run_until_complete(self._async.list())

    def close(self) -> None:
        async def shut() -> None:
            await self._async.meta.close()
            await self._async.store.client.close()

        self._loop.run_until_complete(shut())
        self._loop.close()

    def __enter__(self) -> SagaClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

