"""LongPort's binary packets: byte vectors laid out from the SDK's codec.rs (it has no
``#[test]`` of its own), round trips, gzip, and the simulator's independent packers."""

from __future__ import annotations

import gzip

import pytest

from poller.brokers.longportframes import (
    FrameError,
    Push,
    Request,
    Response,
    decode,
    encode,
    header_byte,
)
from poller.simulator.longportpush import pack_push, pack_response, unpack_request


def test_request_bytes_follow_codec_rs() -> None:
    # header 0x01, cmd 2, request id 1 (u32), timeout 5000 ms (u16), len 3 (u24), body.
    packet = Request(command=2, request_id=1, timeout_millis=5000, body=b"\n\x01x")
    assert encode(packet) == bytes.fromhex("01 02 00000001 1388 000003 0a0178")
    assert unpack_request(encode(packet)) == (2, 1, 5000, b"\n\x01x")


def test_response_and_push_bytes_follow_codec_rs() -> None:
    assert decode(bytes.fromhex("02 10 00000007 00 000002 0a00")) == Response(
        command=16, request_id=7, status=0, body=b"\n\x00")
    assert decode(bytes.fromhex("03 12 000001 ff")) == Push(command=18, body=b"\xff")


def test_header_bits() -> None:
    assert header_byte(1) == 0x01
    assert header_byte(3, verify=True) == 0x13
    assert header_byte(2, gzip=True) == 0x22


@pytest.mark.parametrize("packet", [
    Request(16, 2**32 - 1, 60000, b"x" * 300),
    Response(2, 9, 3, b"error body"),
    Push(18, b""),
    Push(18, b"signed", signature=bytes(range(24))),
])
@pytest.mark.parametrize("zipped", [False, True])
def test_round_trips(packet: Request | Response | Push, zipped: bool) -> None:
    assert decode(encode(packet, gzip=zipped)) == packet


def test_the_simulators_packers_agree() -> None:
    assert decode(pack_response(2, 5, 0, b"ok")) == Response(2, 5, 0, b"ok")
    assert decode(pack_push(18, b"note")) == Push(18, b"note")


def test_a_gzip_body_from_another_gzip_writer_is_read() -> None:
    body = gzip.compress(b'{"event":"order_changed_lb"}')
    data = bytes([0x23, 18]) + len(body).to_bytes(3, "big") + body
    assert decode(data) == Push(18, b'{"event":"order_changed_lb"}')


@pytest.mark.parametrize("data", [
    b"", b"\x04\x00", b"\x03", b"\x03\x12\x00\x00\x05ab", b"\x13\x12\x00\x00\x00",
    b"\x23\x12\x00\x00\x03abc", b"\x02\x02\x00\x00",
])
def test_unreadable_packets_raise_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode(data)


def test_fields_out_of_range_are_refused() -> None:
    with pytest.raises(FrameError):
        encode(Request(256, 1, 1, b""))
    with pytest.raises(FrameError):
        encode(Push(18, b"", signature=b"short"))
