"""Errors that reach users: each carries a wire code and a message that says what to do."""

from __future__ import annotations

from kvstore._proto import common_pb2 as pb


class KVError(Exception):
    """A request failed; `code` is the wire ErrorCode, `message` is for people."""

    code: int = pb.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_pb(self) -> pb.Error:
        return pb.Error(code=self.code, message=self.message)


class InvalidArgument(KVError):
    code = pb.INVALID_ARGUMENT


class Unavailable(KVError):
    code = pb.UNAVAILABLE


class Timeout(KVError):
    code = pb.TIMEOUT


class Corruption(KVError):
    code = pb.CORRUPTION


class NotReady(KVError):
    code = pb.NOT_READY


class Internal(KVError):
    code = pb.INTERNAL


class NotLeader(KVError):
    code = pb.NOT_LEADER


class Conflict(KVError):
    code = pb.CONFLICT


class Fenced(KVError):
    """A guarded write's token is below the highest a replica has seen for its lock.

    `refused_by` names the replicas that refused it; `accepted_by` those that hold it
    durably anyway (empty when it was refused where it would have been minted: nothing was
    written).
    """

    code = pb.FENCED

    def __init__(self, message: str, *, lock: str = "", token: int = 0, highest: int = 0,
                 refused_by: tuple[str, ...] = (), accepted_by: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.lock, self.token, self.highest = lock, token, highest
        self.refused_by, self.accepted_by = tuple(refused_by), tuple(accepted_by)

    def to_pb(self) -> pb.Error:
        return pb.Error(code=self.code, message=self.message, fenced=pb.Fenced(
            lock=self.lock, token=self.token, highest=self.highest,
            refused_by=self.refused_by, accepted_by=self.accepted_by))


BY_CODE: dict[int, type[KVError]] = {
    cls.code: cls
    for cls in (InvalidArgument, Unavailable, Timeout, Corruption, NotReady, Internal, NotLeader,
                Conflict, Fenced)
}


def from_pb(err: pb.Error) -> KVError:
    if err.code == pb.FENCED:
        f = err.fenced
        return Fenced(err.message, lock=f.lock, token=f.token, highest=f.highest,
                      refused_by=tuple(f.refused_by), accepted_by=tuple(f.accepted_by))
    return BY_CODE.get(err.code, Internal)(err.message)


class Unauthenticated(KVError):
    """No credentials, or credentials the cluster does not accept (gRPC UNAUTHENTICATED)."""


class PermissionDenied(KVError):
    """Authenticated, but the role does not allow the request (gRPC PERMISSION_DENIED)."""
