# Generated from the official LongPort/Longbridge protocol definitions, control/control.proto of
# github.com/longbridge/openapi-protobufs at c3c1a3e1dbc08155d150d0a6ee549f2f391de5fb (the
# submodule rust/crates/proto/openapi-protobufs of longbridge/openapi), with grpcio-tools
# 1.59.5 (protoc for the protobuf 4.25 runtime), from that repository's root:
#   python -m grpc_tools.protoc -I. --python_out=OUT --pyi_out=OUT \
#       control/control.proto control/error.proto trade/subscribe.proto
# Not edited beyond this header. Generated code: not linted or type-checked.
# ruff: noqa
# mypy: ignore-errors
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Command(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
    CMD_CLOSE: _ClassVar[Command]
    CMD_HEARTBEAT: _ClassVar[Command]
    CMD_AUTH: _ClassVar[Command]
    CMD_RECONNECT: _ClassVar[Command]
CMD_CLOSE: Command
CMD_HEARTBEAT: Command
CMD_AUTH: Command
CMD_RECONNECT: Command

class Close(_message.Message):
    __slots__ = ["code", "reason"]
    class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = []
        HeartbeatTimeout: _ClassVar[Close.Code]
        ServerError: _ClassVar[Close.Code]
        ServerShutdown: _ClassVar[Close.Code]
        UnpackError: _ClassVar[Close.Code]
        AuthError: _ClassVar[Close.Code]
        SessExpired: _ClassVar[Close.Code]
        ConnectDuplicate: _ClassVar[Close.Code]
    HeartbeatTimeout: Close.Code
    ServerError: Close.Code
    ServerShutdown: Close.Code
    UnpackError: Close.Code
    AuthError: Close.Code
    SessExpired: Close.Code
    ConnectDuplicate: Close.Code
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: Close.Code
    reason: str
    def __init__(self, code: _Optional[_Union[Close.Code, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ["timestamp", "heartbeat_id"]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ID_FIELD_NUMBER: _ClassVar[int]
    timestamp: int
    heartbeat_id: int
    def __init__(self, timestamp: _Optional[int] = ..., heartbeat_id: _Optional[int] = ...) -> None: ...

class AuthRequest(_message.Message):
    __slots__ = ["token", "metadata"]
    class MetadataEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    token: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, token: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AuthResponse(_message.Message):
    __slots__ = ["session_id", "expires", "limit", "online"]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    expires: int
    limit: int
    online: int
    def __init__(self, session_id: _Optional[str] = ..., expires: _Optional[int] = ..., limit: _Optional[int] = ..., online: _Optional[int] = ...) -> None: ...

class ReconnectRequest(_message.Message):
    __slots__ = ["session_id", "metadata"]
    class MetadataEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, session_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ReconnectResponse(_message.Message):
    __slots__ = ["session_id", "expires", "limit", "online"]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    expires: int
    limit: int
    online: int
    def __init__(self, session_id: _Optional[str] = ..., expires: _Optional[int] = ..., limit: _Optional[int] = ..., online: _Optional[int] = ...) -> None: ...
