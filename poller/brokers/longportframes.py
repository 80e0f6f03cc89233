"""LongPort's binary WebSocket packets: one packet per binary WebSocket message.

Mirrored from the official SDK, ``rust/crates/wsclient/src/codec.rs`` (longbridge/openapi;
the codec has no ``#[test]`` of its own, so the tests here build vectors from its layout).
All integers are big-endian:

* header byte: packet type in the low four bits (1 request, 2 response, 3 push), ``0x10``
  when a signature follows the body, ``0x20`` when the body is gzip-compressed;
* request: header, command code (u8), request id (u32), timeout in milliseconds (u16),
  body length (u24), body;
* response: header, command code (u8), request id (u32), status (u8; 0 is success, else the
  body is a ``control.v1`` ``Error``), body length (u24), body;
* push: header, command code (u8), body length (u24), body;
* with the verify bit, an 8-byte nonce and a 16-byte signature after the body.

The SDK only ever encodes requests and never sets the verify or gzip bits itself; it
decodes all three kinds (gunzipping a body that says so). Both ends are written here so
that the simulator's side can be checked against the same layout.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

TYPE_REQUEST = 1
TYPE_RESPONSE = 2
TYPE_PUSH = 3
FLAG_VERIFY = 0b0001_0000
FLAG_GZIP = 0b0010_0000
#: A body length is a u24.
MAX_BODY = (1 << 24) - 1
#: nonce (8 bytes) + signature (16 bytes), present when the verify bit is set.
SIGNATURE_BYTES = 24
#: Largest body read after gunzip: a compressed body cannot expand past this.
MAX_INFLATED = 16 * 1024 * 1024


class FrameError(ValueError):
    """A WebSocket message that is not a readable LongPort packet."""


@dataclass(frozen=True)
class Request:
    """A request (client to server): answered by a :class:`Response` with its id."""

    command: int
    request_id: int
    timeout_millis: int
    body: bytes
    signature: bytes | None = None


@dataclass(frozen=True)
class Response:
    """The answer to the request with ``request_id``; ``status`` 0 is success."""

    command: int
    request_id: int
    status: int
    body: bytes
    signature: bytes | None = None


@dataclass(frozen=True)
class Push:
    """A message the server sends unasked (a notification, a close)."""

    command: int
    body: bytes
    signature: bytes | None = None


Packet = Request | Response | Push


def header_byte(kind: int, *, verify: bool = False, gzip: bool = False) -> int:
    """The first byte of a packet (``PacketHeader::encode``)."""
    return (kind & 0x0F) | (FLAG_VERIFY if verify else 0) | (FLAG_GZIP if gzip else 0)


def encode(packet: Packet, *, gzip: bool = False) -> bytes:
    """The bytes of one packet (``gzip``: compress the body and set the bit).

    :raises FrameError: a field does not fit its width.
    """
    body = _gzip(packet.body) if gzip else packet.body
    if len(body) > MAX_BODY:
        raise FrameError(f"body of {len(body)} bytes is longer than a u24 length allows")
    signature = packet.signature
    if signature is not None and len(signature) != SIGNATURE_BYTES:
        raise FrameError(f"signature must be {SIGNATURE_BYTES} bytes, got {len(signature)}")
    try:
        if isinstance(packet, Request):
            head = struct.pack(">BBIH", header_byte(TYPE_REQUEST, verify=signature is not None,
                                                    gzip=gzip),
                               packet.command, packet.request_id, packet.timeout_millis)
        elif isinstance(packet, Response):
            head = struct.pack(">BBIB", header_byte(TYPE_RESPONSE, verify=signature is not None,
                                                    gzip=gzip),
                               packet.command, packet.request_id, packet.status)
        else:
            head = struct.pack(">BB", header_byte(TYPE_PUSH, verify=signature is not None,
                                                  gzip=gzip), packet.command)
    except struct.error as err:
        raise FrameError(f"packet field out of range: {err}") from None
    return head + len(body).to_bytes(3, "big") + body + (signature or b"")


def decode(data: bytes) -> Packet:
    """Read one packet (``Packet::decode``), gunzipping its body if the header says so.

    Bytes after the body (and signature) are ignored, as the SDK's release build does.

    :raises FrameError: empty, an unknown type, truncated, or a body that does not gunzip.
    """
    if not data:
        raise FrameError("empty message")
    first = data[0]
    kind, verify, gzip = first & 0x0F, bool(first & FLAG_VERIFY), bool(first & FLAG_GZIP)
    view = memoryview(data)
    try:
        if kind == TYPE_REQUEST:
            command, request_id, timeout = struct.unpack_from(">BIH", view, 1)
            body, signature = _body(view, 8, verify)
            packet: Packet = Request(command, request_id, timeout, body, signature)
        elif kind == TYPE_RESPONSE:
            command, request_id, status = struct.unpack_from(">BIB", view, 1)
            body, signature = _body(view, 7, verify)
            packet = Response(command, request_id, status, body, signature)
        elif kind == TYPE_PUSH:
            command = view[1]
            body, signature = _body(view, 2, verify)
            packet = Push(command, body, signature)
        else:
            raise FrameError(f"unknown packet type {kind}")
    except (struct.error, IndexError):
        raise FrameError(f"truncated packet ({len(data)} bytes)") from None
    if not gzip:
        return packet
    return _with_body(packet, _gunzip(packet.body))


def _body(view: memoryview, offset: int, verify: bool) -> tuple[bytes, bytes | None]:
    if len(view[offset:offset + 3]) != 3:
        raise FrameError("truncated packet: no body length")
    length = int.from_bytes(view[offset:offset + 3], "big")
    start = offset + 3
    body = bytes(view[start:start + length])
    if len(body) != length:
        raise FrameError(f"truncated packet: body says {length} bytes, {len(body)} came")
    if not verify:
        return body, None
    signature = bytes(view[start + length:start + length + SIGNATURE_BYTES])
    if len(signature) != SIGNATURE_BYTES:
        raise FrameError("truncated packet: the verify bit is set but no signature follows")
    return body, signature


def _with_body(packet: Packet, body: bytes) -> Packet:
    if isinstance(packet, Request):
        return Request(packet.command, packet.request_id, packet.timeout_millis, body,
                       packet.signature)
    if isinstance(packet, Response):
        return Response(packet.command, packet.request_id, packet.status, body,
                        packet.signature)
    return Push(packet.command, body, packet.signature)


def _gzip(body: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=31)  # 16 + 15: a gzip stream, as flate2 reads it
    return compressor.compress(body) + compressor.flush()


def _gunzip(body: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(body, MAX_INFLATED)
    except zlib.error as err:
        raise FrameError(f"gzip body does not inflate: {err}") from None
    if inflater.unconsumed_tail:
        raise FrameError(f"gzip body inflates past {MAX_INFLATED} bytes")
    if not inflater.eof:
        raise FrameError("gzip body is truncated")
    return out


__all__ = ["FLAG_GZIP", "FLAG_VERIFY", "MAX_BODY", "TYPE_PUSH", "TYPE_REQUEST", "TYPE_RESPONSE",
           "FrameError", "Packet", "Push", "Request", "Response", "decode", "encode",
           "header_byte"]
