# Generated from the official LongPort/Longbridge protocol definitions, control/error.proto of
# github.com/longbridge/openapi-protobufs at c3c1a3e1dbc08155d150d0a6ee549f2f391de5fb (the
# submodule rust/crates/proto/openapi-protobufs of longbridge/openapi), with grpcio-tools
# 1.59.5 (protoc for the protobuf 4.25 runtime), from that repository's root:
#   python -m grpc_tools.protoc -I. --python_out=OUT --pyi_out=OUT \
#       control/control.proto control/error.proto trade/subscribe.proto
# Not edited beyond this header. Generated code: not linted or type-checked.
# ruff: noqa
# mypy: ignore-errors
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Error(_message.Message):
    __slots__ = ["code", "msg"]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    code: int
    msg: str
    def __init__(self, code: _Optional[int] = ..., msg: _Optional[str] = ...) -> None: ...
