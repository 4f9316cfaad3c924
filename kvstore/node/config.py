"""Node configuration: one dataclass, filled from flags or environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kvstore.core import tombstones
from kvstore.core.address import is_host_port
from kvstore.core.ring import DEFAULT_VNODES


@dataclass
class NodeConfig:
    node_id: str
    listen: str = "127.0.0.1:7001"
    advertise: str = ""               # the address peers and clients use; default: listen
    seeds: list[str] = field(default_factory=list)
    data_dir: Path | None = None      # None: in-memory storage (tests)
    restored: bool = False            # data_dir was restored from a backup (--restored)
    replication_factor: int = 3
    vnodes: int = DEFAULT_VNODES
    sync: str = "full"                # storage sync policy: full | normal | off
    timeout_ms: int = 2000
    max_key_bytes: int = 1024
    max_value_bytes: int = 1024 * 1024
    hinted_handoff: bool = True       # hints for replicas that missed a write (--no-hinted-handoff)
    sloppy_quorum: bool = False       # hints count towards W by default (--sloppy-quorum)
    hint_max_age_ms: int = 3 * 3600 * 1000
    handoff_interval: float = 1.0
    handoff_rate: float = 500.0       # hints delivered per second (--handoff-rate); 0: unpaced
    gossip_interval: float = 1.0
    antientropy_interval: float = 60.0  # seconds between background sessions; 0: off
    tombstone_grace_ms: int = 10 * 24 * 3600 * 1000
    max_clock_skew_ms: int = 60_000   # the tombstone rules' margin for node clock differences
    repair_rate_bytes: int = 8 * 1024 * 1024
    repair_rate_keys: float = 1000.0  # keys a repair session moves per s; 0: unpaced
    read_all_chance: float = 0.1        # reads that ask all N replicas, not just R
    raft_voters: list[str] = field(default_factory=list)  # the Raft metadata group; [] none
    raft_bootstrap: bool = False      # a voter with no raft state may create a new group
    raft_join: bool = False           # no raft state: join as a non-voting member, wait to be added
    raft_snapshot_every: int = 1000
    phi_threshold: float = 8.0
    metrics_port: int = 0             # HTTP port for /metrics and the dashboard; 0: none
    chaos: bool = False               # accept the chaos admin API (kv chaos) (--chaos)
    peer_listen: str = ""             # a separate internode listener; "" = the same as listen
    peer_advertise: str = ""          # the address peers use for it (default: peer_listen)
    tls_dir: Path | None = None       # certificate directory: mutual TLS between nodes
    auth: bool = False                # clients must authenticate (needs tls_dir and raft)
    token_ttl: float = 900.0          # seconds a login token is valid
    join: bool = False                # a new node: stream the ranges it will own first (--join)
    replace: str = ""                 # with join: take this dead node's tokens (--replace)
    ring_delay: float | None = None   # wait after announcing a move; None: 2 gossip + 1 timeout
    verify_moves: bool = True         # a Merkle comparison with the sources after a join

    @property
    def ring_delay_s(self) -> float:
        if self.ring_delay is not None:
            return self.ring_delay
        return 2 * self.gossip_interval + self.timeout_ms / 1000

    @property
    def address(self) -> str:
        return self.advertise or self.listen

    @property
    def peer_address(self) -> str:
        """Where peers reach this node (gossiped): the peer listener when there is one."""
        if self.peer_listen and self.peer_listen != self.listen:
            return self.peer_advertise or self.peer_listen
        return self.address

    def validate(self) -> None:
        """Raise ValueError naming what is wrong and what is allowed."""
        if not self.node_id or any(c.isspace() or c in "=,@" for c in self.node_id):
            raise ValueError(f"node id {self.node_id!r} must be non-empty, without spaces, "
                             "'=', ',' or '@'")
        for name, value in (("listen", self.listen), ("advertise", self.address)):
            if not is_host_port(value):
                raise ValueError(f"--{name} {value!r} must be host:port")
        if self.peer_listen and not is_host_port(self.peer_listen):
            raise ValueError(f"--peer-listen {self.peer_listen!r} must be host:port")
        if self.peer_advertise and not is_host_port(self.peer_advertise):
            raise ValueError(f"--peer-advertise {self.peer_advertise!r} must be host:port")
        if self.auth and self.tls_dir is None:
            raise ValueError("--auth needs --tls (passwords and tokens must not cross the "
                             "network in clear)")
        if self.auth and not (self.raft_voters or self.raft_join):
            raise ValueError("--auth needs the Raft metadata group (--raft-voters): users "
                             "are kept there")
        if not 1 <= self.token_ttl <= 7 * 24 * 3600:
            raise ValueError("--token-ttl must be 1 second .. 7 days")
        if not 1 <= self.replication_factor <= 15:
            raise ValueError(f"replication factor {self.replication_factor} must be 1..15")
        if not 1 <= self.vnodes <= 4096:
            raise ValueError(f"vnodes {self.vnodes} must be 1..4096")
        if self.sync not in ("full", "normal", "off"):
            raise ValueError(f"sync {self.sync!r} must be full, normal or off")
        if not 0.01 <= self.gossip_interval <= 60:
            raise ValueError("gossip interval must be 0.01..60 seconds")
        if self.raft_bootstrap and self.raft_join:
            raise ValueError("--raft-bootstrap (create a new group) and --raft-join (join an "
                             "existing one) exclude each other")
        if len(set(self.raft_voters)) != len(self.raft_voters):
            raise ValueError(f"raft voters {self.raft_voters} repeat a node id")
        if not 0.0 <= self.read_all_chance <= 1.0:
            raise ValueError("read-all chance must be between 0 and 1")
        if not self.phi_threshold > 0:
            raise ValueError("phi threshold must be positive")
        if self.timeout_ms <= 0:
            raise ValueError("timeout must be positive")
        if not 1 <= self.max_key_bytes <= 65535:
            raise ValueError("max key bytes must be 1..65535")
        if not 0 <= self.max_value_bytes <= 32 * 1024 * 1024:
            raise ValueError("max value bytes must be 0..33554432 (32 MiB)")
        if self.replace and not self.join:
            raise ValueError("--replace needs --join (the replacement joins a running "
                             "cluster and streams the dead node's ranges)")
        if self.replace and self.replace == self.node_id:
            raise ValueError(f"--replace {self.replace}: a node cannot replace itself (start "
                             "it with a new --id, or wipe it and start it with --join)")
        if self.ring_delay is not None and not 0 <= self.ring_delay <= 600:
            raise ValueError("--ring-delay must be 0..600 seconds")
        if self.repair_rate_keys < 0:
            raise ValueError("--repair-rate-keys must be >= 0 keys per second (0: unpaced)")
        if self.antientropy_interval < 0:
            raise ValueError("--antientropy-interval must be >= 0 seconds (0: off)")
        if self.hint_max_age_ms <= 0:
            raise ValueError("--hint-max-age must be positive")
        if self.handoff_rate < 0:
            raise ValueError("--handoff-rate must be >= 0 hints per second (0: unpaced)")
        # The tombstone rules (core/tombstones.py, with their clock-skew allowance): with
        # settings check_settings rejects, a hint could outlive the purge marker of the
        # delete that superseded it and bring deleted data back.
        hint_ttl_ms = self.hint_max_age_ms if self.hinted_handoff else None
        try:
            tombstones.check_settings(self.tombstone_grace_ms, self.max_clock_skew_ms,
                                      hint_ttl_ms)
        except ValueError as exc:
            flags = (f"--tombstone-grace {self.tombstone_grace_ms / 1000:g}, "
                     f"--max-clock-skew {self.max_clock_skew_ms / 1000:g}")
            if hint_ttl_ms is not None:
                flags += f", --hint-max-age {hint_ttl_ms / 1000:g}"
            raise ValueError(f"{flags} (seconds) is not safe: {exc}") from None
