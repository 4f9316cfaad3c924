from kvstore._proto import internode_pb2 as _internode_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerFrame(_message.Message):
    __slots__ = ("id", "batch")
    ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    id: int
    batch: _internode_pb2.PeerBatch
    def __init__(self, id: _Optional[int] = ..., batch: _Optional[_Union[_internode_pb2.PeerBatch, _Mapping]] = ...) -> None: ...

class PeerFrameReply(_message.Message):
    __slots__ = ("id", "reply")
    ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    id: int
    reply: _internode_pb2.PeerBatchReply
    def __init__(self, id: _Optional[int] = ..., reply: _Optional[_Union[_internode_pb2.PeerBatchReply, _Mapping]] = ...) -> None: ...
