"""Storage: the engine contract, the durable SQLite engine, the in-memory engine, and
`AsyncStore` (asyncio access with group commit). See docs/storage.md."""

from __future__ import annotations

from pathlib import Path

from kvstore.storage.engine import CorruptRecordError, Engine, Mutation, StorageError
from kvstore.storage.memory import DELETE, DISCARD, MemoryEngine, OverwriteCorrupt, StepResult
from kvstore.storage.sqlite import SYNC_MODES, CorruptDatabaseError, SqliteEngine
from kvstore.storage.store import AsyncStore

__all__ = [
    "DELETE",
    "DISCARD",
    "SYNC_MODES",
    "AsyncStore",
    "CorruptDatabaseError",
    "CorruptRecordError",
    "Engine",
    "MemoryEngine",
    "Mutation",
    "OverwriteCorrupt",
    "SqliteEngine",
    "StepResult",
    "StorageError",
    "open_engine",
]

DB_FILE = "data.db"


def open_engine(data_dir: Path | None, sync: str = "full") -> Engine:
    """The node's engine: in memory when `data_dir` is None, else SQLite at data_dir/data.db
    (the directory is created if missing)."""
    if data_dir is None:
        return MemoryEngine()
    data_dir = Path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create data directory {data_dir}: {exc}") from exc
    return SqliteEngine(data_dir / DB_FILE, sync)
