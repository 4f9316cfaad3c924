"""Small state files that safety depends on, written so that a crash leaves the old or
the new content, never a mix, an empty file or nothing.

`write_atomic` writes a temporary file beside the target, fsyncs it, renames it over the
target and fsyncs the directory (the rename itself is only durable once the directory
is). Without the fsyncs, a power loss shortly after a rename can leave a zero-length or
missing file on common filesystems, although the process saw the write succeed.

`read_state` tells a missing file (None: nothing was ever saved) from one that exists but
cannot be read (`StateFileError`). What an unreadable file means is the owner's decision;
for safety state it is never "empty", because an empty state is what a brand-new node
has, and a node that forgets what it promised must not act as if it had promised nothing.

Used by every safety-state file of a node: `members.json` (services/gossip.py), the
actor-epoch reservations `epochs.json` (storage/epochs.py) and the Raft log and snapshot
files (storage/raftlog.py `OsFiles.replace`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from kvstore.storage.engine import StorageError

TMP_SUFFIX = ".tmp"


class StateFileError(StorageError):
    """A state file exists but cannot be read or parsed; the message names the file."""


def write_atomic(path: Path | str, data: bytes) -> None:
    """Make `data` the whole content of `path`, atomically and durably.

    On return the new content survives a crash or power loss; if this raises (disk full,
    no permission), `path` still holds its previous content and no temporary file is left.
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path | str) -> None:
    """Make the directory's entries (a rename, a new or deleted file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_state(path: Path | str) -> bytes | None:
    """The content of `path`; None when it does not exist; StateFileError when it exists
    but cannot be read (permissions, I/O error, a directory in its place)."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"cannot read {path}: {exc.strerror or exc}") from None
