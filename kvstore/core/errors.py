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


BY_CODE: dict[int, type[KVError]] = {
    cls.code: cls
    for cls in (InvalidArgument, Unavailable, Timeout, Corruption, NotReady, Internal, NotLeader,
                Conflict)
}


def from_pb(err: pb.Error) -> KVError:
    return BY_CODE.get(err.code, Internal)(err.message)
