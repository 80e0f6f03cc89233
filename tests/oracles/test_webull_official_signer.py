"""poller's Webull signature against the official SDKs' own signers (code nobody here wrote).

HMAC-SHA1 is checked against the legacy ``webull-python-sdk-core`` (``webullsdkcore``), whose
HMAC path is SHA1 with an MD5 body digest; HMAC-SHA256 against ``webull-openapi-python-sdk``
3.x (``webull.core``), which signs HMAC-SHA256 with a SHA-256 body digest. Both are test extras
(installed by the README's test command). The SDKs draw the timestamp and nonce themselves:
they are fixed here through the SDKs' own ``common`` helpers.
"""

from __future__ import annotations

from typing import Any

import pytest
import webull.core.auth.composer.default_signature_composer as modern
import webullsdkcore.auth.composer.default_signature_composer as legacy
from webull.core.auth.algorithm import sha_hmac256_new
from webull.core.utils import common as modern_common
from webullsdkcore.auth.algorithm import sha_hmac1
from webullsdkcore.utils import common as legacy_common

from poller.brokers.webull import compact_json, sign

KEY, SECRET = "a1b2c3d4e5f6a7b8c9d0", "s3cr3t/with+chars=&"
STAMP, NONCE = "2026-05-20T03:24:31Z", "4d7f0a5e-9b1c-4c1e-8f1a-0e9d2c3b4a59"
HOST = "api.webull.hk"

#: (path, query, body): list, detail, cancel, replace — with spaces, '/', ',', ':' and
#: non-ASCII in values.
CASES: list[tuple[str, dict[str, str], dict[str, Any] | None]] = [
    ("/trade/orders/list-open", {"account_id": "20150320010101001", "page_size": "100"}, None),
    ("/trade/orders/list-today", {"account_id": "A 1/2,3:4", "last_client_order_id": "c9"},
     None),
    ("/trade/order/detail", {"account_id": "帳戶", "client_order_id": "wb:0001/a,b"}, None),
    ("/trade/order/cancel", {}, {"account_id": "20150320010101001",
                                 "client_order_id": "wb0001"}),
    ("/trade/order/replace", {}, {"account_id": "20150320010101001", "modify_orders": [
        {"client_order_id": "wb 0001", "qty": "600", "limit_price": "101.5",
         "remark": "改單 a/b,c:d"}]}),
]


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    for common in (legacy_common, modern_common):
        monkeypatch.setattr(common, "get_iso_8601_date", lambda *a: STAMP)
        monkeypatch.setattr(common, "get_uuid", lambda: NONCE)


@pytest.mark.parametrize(("path", "query", "body"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("algorithm", ["HMAC-SHA1", "HMAC-SHA256"])
def test_the_signature_equals_the_official_signer_s(fixed_clock: None, algorithm: str,
                                                    path: str, query: dict[str, str],
                                                    body: dict[str, Any] | None) -> None:
    headers: dict[str, str] = {}
    if algorithm == "HMAC-SHA1":
        official = legacy.calc_signature(headers, HOST, path, query or None, body, KEY,
                                         SECRET, sha_hmac1)
    else:
        official = modern.calc_signature(headers, HOST, path, query or None, body, KEY,
                                         SECRET, sha_hmac256_new)
    ours = sign("POST" if body else "GET", HOST, path, query,
                compact_json(body) if body is not None else None, app_key=KEY,
                app_secret=SECRET, algorithm=algorithm, timestamp=STAMP, nonce=NONCE)
    assert ours["x-signature"] == official
    # The headers the SDK sent beside it are the ones poller sends.
    for name in ("x-app-key", "x-timestamp", "x-signature-algorithm", "x-signature-version",
                 "x-signature-nonce"):
        assert ours[name] == headers[name], name


@pytest.mark.parametrize("algorithm", ["HMAC-SHA1", "HMAC-SHA256"])
def test_requests_poller_really_sends_verify_with_the_official_signer(
        monkeypatch: pytest.MonkeyPatch, algorithm: str) -> None:
    """Not fixed inputs this time: the adapter's own list, detail and cancel requests, as
    they leave on the wire, re-signed by the official code with the timestamp and nonce they
    carry, give the signature they carry."""
    import asyncio
    import json

    import httpx

    from poller.adapter import ListScope
    from poller.brokers.webull import WebullAdapter, WebullConfig
    from poller.ratelimit import LimitGroup, RateBudget

    seen: list[httpx.Request] = []
    detail = {"client_order_id": "wb 0001/x", "order_id": "036LVV5P4I8BV0KHKN60000001",
              "order_status": "SUBMITTED", "symbol": "00700", "side": "BUY", "qty": "100",
              "filled_qty": "0", "order_type": "LIMIT", "limit_price": "385.2",
              "instrument_id": "913256135"}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("list-open"):
            data: Any = {"has_next": False, "orders": [detail]}
        elif request.url.path.endswith("detail"):
            data = detail
        else:
            data = {"client_order_id": "wb 0001/x"}
        return httpx.Response(200, json={"code": 200, "msg": "ok", "data": data})

    config = WebullConfig.model_validate({
        "kind": "webull", "base_url": f"https://{HOST}", "app_key": KEY, "app_secret": SECRET,
        "account_ids": ["帳戶 A,1"], "signature_algorithm": algorithm, "list": "open"})
    budget = RateBudget([LimitGroup(name, spec) for name, spec in WebullAdapter.limits.items()])
    adapter = WebullAdapter("wb", config, httpx.AsyncClient(
        base_url=config.base_url, transport=httpx.MockTransport(handler)), budget)

    async def work() -> None:
        try:
            result = await adapter.list_orders(ListScope("帳戶 A,1", open_only=True))
            await adapter.fetch_order("帳戶 A,1", result.orders[0].order_id)
            await adapter.cancel_order(result.orders[0])
        finally:
            await adapter.aclose()

    asyncio.run(work())
    assert [r.url.path.rsplit("/", 1)[-1] for r in seen] == ["list-open", "detail", "cancel"]
    for request in seen:
        monkeypatch.setattr(legacy_common, "get_iso_8601_date",
                            lambda *a, r=request: r.headers["x-timestamp"])
        monkeypatch.setattr(modern_common, "get_iso_8601_date",
                            lambda *a, r=request: r.headers["x-timestamp"])
        monkeypatch.setattr(legacy_common, "get_uuid",
                            lambda r=request: r.headers["x-signature-nonce"])
        monkeypatch.setattr(modern_common, "get_uuid",
                            lambda r=request: r.headers["x-signature-nonce"])
        query = dict(request.url.params.multi_items()) or None
        body = json.loads(request.content) if request.content else None
        composer, spec = ((legacy, sha_hmac1) if algorithm == "HMAC-SHA1"
                          else (modern, sha_hmac256_new))
        official = composer.calc_signature({}, request.headers["host"], request.url.path,
                                           query, body, KEY, SECRET, spec)
        assert request.headers["x-signature"] == official, request.url.path
        assert request.headers["x-version"] == "v1"
