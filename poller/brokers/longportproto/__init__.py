"""Python modules generated from LongPort's official .proto files (see each file's header):
``control_pb2`` (``longbridge.control.v1``: auth, reconnect, heartbeat, close),
``error_pb2`` (the ``Error`` body of a failed response) and ``subscribe_pb2``
(``longbridge.trade.v1``: subscribe, unsubscribe, notification)."""

from __future__ import annotations
