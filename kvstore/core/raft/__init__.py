"""Raft consensus core for the metadata group, in the sans-IO style of etcd-raft.

`RaftNode` is a synchronous, single-threaded object. It never touches a socket, a file, a
clock or asyncio: time is `tick()` (an abstract unit; the driver decides how long one is),
election-timeout randomness comes from the injected `random.Random`, and everything the
outside world must do is returned by `ready()`.

Driving contract (the one place it is written down; only the driver enforces it)::

    node.tick()                        # every tick interval
    node.step(decode_message(data))    # every message from the network
    node.propose(cmd) / node.read_index(ctx) / node.propose_conf_change(cc)
    node.transfer_leadership(to)

    while node.has_ready():
        rd = node.ready()
        1. PERSIST: install rd.snapshot (if any), then write rd.entries - first discarding
           every stored entry with index >= rd.entries[0].index (rd.truncate_from) - and
           rd.hard_state (if not None). If rd.must_sync, fsync before step 2.
        2. SEND rd.messages (best effort; raft tolerates loss, duplication, reordering).
        3. APPLY: restore the state machine from rd.snapshot (if any), then apply
           rd.committed in order; serve rd.read_states once the applied index reaches
           each ReadState.index.
        4. node.advance(rd)

`step()`, `tick()` and `propose()` may be called between `ready()` and `advance()`; a
second `ready()` before `advance()` is a usage error. Messages in a Ready may depend on
the entries and hard state in the same Ready (a vote, an append acknowledgement), which is
why step 1 precedes step 2. Committed entries are applied only after they are durable.

Exception, the leader's parallel write (Ongaro's thesis 10.2.1): when `rd.send_first` is
set (a leader whose term and vote are already durable), step 2 may come before or during
step 1, so the followers write the new entries while the leader does. The leader's own
match index - its vote in the commit quorum - advances only in `advance()`, i.e. after its
write is durable (asserted whenever the commit index is computed), so an entry is
committed only once a quorum holds it durably, whether or not that quorum includes the
leader. Followers never send first: an append acknowledgement promises durability.

Batching: proposals made while a Ready is being persisted join the next Ready, so one
write and one fsync carry all of them (group commit), and each follower gets them in as
few appends as `max_entries_per_msg` allows.

Snapshots: the driver calls `create_snapshot(state_machine_image)` at the applied index,
persists the result, and then `compact(index)` to free log memory (keeping some trailing
entries lets slightly lagging followers catch up without a snapshot).

Flow control: per follower the leader keeps a `Progress`: in PROBE state one append is
outstanding at a time; in REPLICATE state it pipelines up to `Config.max_inflight` appends
of up to `Config.max_entries_per_msg` entries each without waiting for acknowledgements.
"""

from kvstore.core.raft.messages import (
    WIRE_VERSION,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageDecodeError,
    MsgType,
    Snapshot,
    decode_conf_change,
    decode_message,
    encode_conf_change,
    encode_message,
)
from kvstore.core.raft.progress import Progress, ProgressState
from kvstore.core.raft.raft import (
    ConfChangeError,
    Config,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
    RaftNode,
    RaftUsageError,
    ReadState,
    Ready,
    Role,
    Status,
)

__all__ = [
    "WIRE_VERSION",
    "ConfChange",
    "ConfChangeError",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MessageDecodeError",
    "MsgType",
    "NotLeaderError",
    "Progress",
    "ProgressState",
    "ProposalDroppedError",
    "RaftError",
    "RaftNode",
    "RaftUsageError",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "Status",
    "decode_conf_change",
    "decode_message",
    "encode_conf_change",
    "encode_message",
]
