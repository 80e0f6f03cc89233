"""The broker adapter base: the error table and its classifier, request kinds and their
limit groups, the error path of an answer, and the class check at registration."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, ClassVar

import httpx
import pytest

import poller
from poller import (
    Answer,
    BrokerAdapter,
    BrokerAuthError,
    BrokerConfig,
    BrokerError,
    BrokerMalformed,
    BrokerNotFound,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    ErrorAnswer,
    ErrorTable,
    LimitGroup,
    LimitSpec,
    ListResult,
    ListScope,
    RateBudget,
    RequestKind,
    Success,
)
from poller.adapter import ParseCache, adapter_problems
from poller.errors import ConfigError, http_error
from poller.models import OrderSnapshot, OrderStatus
from poller.plugins import get_plugin_manager
from poller.ratelimit import PRIORITY, PRIORITY_ACTION, PRIORITY_ROUTINE
from tests.scripted import ScriptedAdapter
from tests.test_ratelimit import FakeTime

# -- the classifier ---------------------------------------------------------------------------

TABLE = ErrorTable(
    exact={"RATE": BrokerRateLimited, "AUTH": BrokerAuthError, "DOWN": BrokerUnavailable,
           "GONE": BrokerNotFound, "BAD": BrokerRejected},
    broad={r"(?i)no such order": BrokerNotFound, r"^MAINT_": BrokerUnavailable},
    http={418: BrokerMalformed},
)

CLASSIFY_CASES = [
    # The HTTP status alone (no code, or a code no table knows).
    ("401", 401, ErrorAnswer(), BrokerAuthError),
    ("403", 403, ErrorAnswer(), BrokerAuthError),
    ("429", 429, ErrorAnswer(), BrokerRateLimited),
    ("500", 500, ErrorAnswer(), BrokerUnavailable),
    ("503 unknown code", 503, ErrorAnswer("X1", "whatever"), BrokerUnavailable),
    ("400", 400, ErrorAnswer(), BrokerRejected),
    ("404", 404, ErrorAnswer(), BrokerRejected),
    ("error envelope in a 200", 200, ErrorAnswer("X1", "nope"), BrokerRejected),
    ("http override", 418, ErrorAnswer(), BrokerMalformed),
    # An exact code decides at a generic or 5xx status...
    ("exact in a 200", 200, ErrorAnswer("DOWN"), BrokerUnavailable),
    ("exact rate in a 400", 400, ErrorAnswer("RATE"), BrokerRateLimited),
    ("exact not-found beats a 500", 500, ErrorAnswer("GONE"), BrokerNotFound),
    ("exact auth beats a 500", 502, ErrorAnswer("AUTH"), BrokerAuthError),
    ("exact rejection beats a 500", 500, ErrorAnswer("BAD"), BrokerRejected),
    # ...but a 429 or 401/403 outranks a code that says less.
    ("429 outranks an auth code", 429, ErrorAnswer("AUTH"), BrokerRateLimited),
    ("429 outranks a not-found code", 429, ErrorAnswer("GONE"), BrokerRateLimited),
    ("401 outranks an outage code", 401, ErrorAnswer("DOWN"), BrokerAuthError),
    ("a rate code outranks a 401", 401, ErrorAnswer("RATE"), BrokerRateLimited),
    ("403 with a rate code", 403, ErrorAnswer("RATE"), BrokerRateLimited),
    # Broad patterns: in the code or the message, only where the status just says no.
    ("broad in the message", 400, ErrorAnswer("X1", "No such order 7"), BrokerNotFound),
    ("broad in the code", 200, ErrorAnswer("MAINT_WINDOW"), BrokerUnavailable),
    ("broad in a 200", 200, ErrorAnswer("", "no such order"), BrokerNotFound),
    ("broad does not beat a 5xx", 500, ErrorAnswer("X1", "no such order"), BrokerUnavailable),
    ("broad does not beat a 429", 429, ErrorAnswer("", "no such order"), BrokerRateLimited),
    ("exact before broad", 400, ErrorAnswer("DOWN", "no such order"), BrokerUnavailable),
    # A status stated inside the envelope replaces the real one.
    ("stated 500", 200, ErrorAnswer("", "busy", status=500), BrokerUnavailable),
    ("stated 429", 200, ErrorAnswer(status=429), BrokerRateLimited),
]


@pytest.mark.parametrize(("status", "answer", "expected"), [c[1:] for c in CLASSIFY_CASES],
                         ids=[c[0] for c in CLASSIFY_CASES])
def test_classify(status: int, answer: ErrorAnswer, expected: type[BrokerError]) -> None:
    assert TABLE.classify(status, answer) is expected


@pytest.mark.parametrize(("status", "answer"), [
    (200, ErrorAnswer("GONE")),
    (400, ErrorAnswer("", "no such order")),
])
def test_not_found_answers_only_a_per_order_read(status: int, answer: ErrorAnswer) -> None:
    assert TABLE.classify(status, answer, per_order=True) is BrokerNotFound
    assert TABLE.classify(status, answer, per_order=False) is BrokerRejected


@pytest.mark.parametrize(("status", "expected"), [
    (200, BrokerRejected), (302, BrokerRejected), (400, BrokerRejected), (401, BrokerAuthError),
    (403, BrokerAuthError), (404, BrokerRejected), (429, BrokerRateLimited),
    (500, BrokerUnavailable), (504, BrokerUnavailable), (599, BrokerUnavailable),
])
def test_default_http_mapping(status: int, expected: type[BrokerError]) -> None:
    assert http_error(status) is expected
    assert ErrorTable().classify(status, ErrorAnswer("ANY", "thing")) is expected


def test_penalties_and_words() -> None:
    table = ErrorTable(penalty=30.0, penalties={"QUOTA": 1800.0},
                       meanings={"QUOTA": "quota exhausted"})
    assert table.penalty_for("QUOTA") == 1800.0 and table.penalty_for("OTHER") == 30.0
    assert ErrorTable().penalty_for("") == 60.0
    assert table.words(BrokerRateLimited, "QUOTA") == "quota exhausted"
    assert table.words(BrokerRateLimited, "OTHER") == "rate limited"
    assert table.words(BrokerNotFound, "") == "no such order"


def test_a_bad_pattern_fails_when_the_table_is_made() -> None:
    with pytest.raises(re.error):
        ErrorTable(broad={"(unclosed": BrokerRejected})


# -- an adapter on the base -----------------------------------------------------------------


class EchoConfig(BrokerConfig):
    """A config with a secret, to see it scrubbed."""

    token: str = "TOKEN-1234"


class EchoAdapter(BrokerAdapter[EchoConfig]):
    """Sends whatever the test's handler answers; ``{"ok": data}`` or ``{"err", "msg"}``."""

    kind: ClassVar[str] = "echo"
    Config: ClassVar[type[BrokerConfig]] = EchoConfig
    limits: ClassVar[dict[str, LimitSpec]] = {"a": LimitSpec(100, 1.0), "b": LimitSpec(100, 1.0)}
    request_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        RequestKind.LIST: ("a",), RequestKind.DETAIL: ("a", "b")}
    errors: ClassVar[ErrorTable] = ErrorTable(
        exact={"SLOW": BrokerRateLimited, "QUOTA": BrokerRateLimited, "GONE": BrokerNotFound},
        penalty=20.0, penalties={"QUOTA": 900.0}, meanings={"QUOTA": "quota exhausted"},
        retry_after=True)
    supports_fetch: ClassVar[bool] = True

    @classmethod
    def secrets(cls, config: EchoConfig) -> list[str]:
        return [config.token]

    def scopes(self) -> list[ListScope]:
        return [ListScope("A")]

    async def list_orders(self, scope: ListScope) -> ListResult:
        raise NotImplementedError

    def read_answer(self, answer: Answer) -> Success | ErrorAnswer:
        body = answer.body
        if isinstance(body, dict) and "ok" in body:
            return Success(body["ok"])
        if isinstance(body, dict):
            return ErrorAnswer(str(body.get("err", "")), str(body.get("msg", "")))
        return ErrorAnswer()


def echo(status: int, body: Any = None, headers: dict[str, str] | None = None, *,
         cls: type[EchoAdapter] = EchoAdapter, sent: list[httpx.Request] | None = None
         ) -> EchoAdapter:
    def handler(request: httpx.Request) -> httpx.Response:
        if sent is not None:
            sent.append(request)
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    cfg = EchoConfig(kind="echo", base_url="http://127.0.0.1:9")
    client = httpx.AsyncClient(base_url=cfg.base_url, transport=httpx.MockTransport(handler))
    budget = RateBudget([LimitGroup(name, spec) for name, spec in cls.limits.items()])
    return cls("ex", cfg, client, budget)


def call(adapter: EchoAdapter, kind: RequestKind | str) -> Any:
    async def go() -> Any:
        try:
            answer = await adapter.request(kind, adapter.client.build_request("GET", "/x"))
            return adapter.unwrap(kind, answer, context="GET /x: ", secrets=("SIGN-5678",))
        finally:
            await adapter.aclose()

    return asyncio.run(go())


UNWRAP_CASES = [
    (200, {"ok": [1, 2]}, None, [1, 2], ""),
    (200, {"err": "GONE", "msg": "unknown"}, BrokerNotFound,
     "GET /x: no such order (HTTP 200, code GONE): unknown", "GONE"),
    (200, {"err": "X9"}, BrokerRejected, "GET /x: refused (HTTP 200, code X9): no message", "X9"),
    (503, "<html>down</html>", BrokerUnavailable,
     "GET /x: broker unavailable (HTTP 503): an HTML error page", "503"),
    (400, "plain words", BrokerRejected, "GET /x: refused (HTTP 400): plain words", "400"),
    (401, "", BrokerAuthError, "GET /x: credentials refused (HTTP 401): no body", "401"),
    (400, {"err": "X1", "msg": "bad TOKEN-1234 and SIGN-5678"}, BrokerRejected,
     "GET /x: refused (HTTP 400, code X1): bad *** and ***", "X1"),
]


@pytest.mark.parametrize(("status", "body", "error", "expected", "code"), UNWRAP_CASES)
def test_unwrap(status: int, body: Any, error: type[BrokerError] | None, expected: Any,
                code: str) -> None:
    adapter = echo(status, body)
    if error is None:
        assert call(adapter, RequestKind.DETAIL) == expected
        return
    with pytest.raises(BrokerError) as caught:
        call(adapter, RequestKind.DETAIL)
    assert type(caught.value) is error
    assert str(caught.value) == expected
    assert caught.value.code == code and caught.value.connection == "ex"


def test_a_secret_cut_by_the_length_limit_is_still_scrubbed() -> None:
    with pytest.raises(BrokerRejected) as caught:
        call(echo(400, {"err": "X1", "msg": "x" * 196 + "TOKEN-1234 and more"}),
             RequestKind.DETAIL)
    assert str(caught.value).endswith("x" * 196 + "*** ")  # the words stop at 200 characters
    with pytest.raises(BrokerRejected) as caught:
        call(echo(400, "y" * 115 + "SIGN-5678"), RequestKind.DETAIL)
    assert str(caught.value).endswith("y" * 115 + "***")


def test_not_found_to_a_list_call_is_a_plain_refusal() -> None:
    with pytest.raises(BrokerError) as caught:
        call(echo(200, {"err": "GONE", "msg": "unknown"}), RequestKind.LIST)
    assert type(caught.value) is BrokerRejected and caught.value.category == "rejected"
    assert "refused (HTTP 200, code GONE)" in str(caught.value)


@pytest.mark.parametrize(("status", "body", "headers", "pause", "paused"), [
    (429, None, None, 20.0, ("a", "b")),  # the table's penalty, on every group of the kind
    (200, {"err": "QUOTA"}, None, 900.0, ("a", "b")),  # a per-code penalty
    (429, None, {"Retry-After": "3"}, 3.0, ("a", "b")),  # the broker's own pause wins
])
def test_rate_limit_pauses_the_groups_of_the_kind(status: int, body: Any,
                                                  headers: dict[str, str] | None,
                                                  pause: float, paused: tuple[str, ...]) -> None:
    adapter = echo(status, body, headers)
    with pytest.raises(BrokerRateLimited) as caught:
        call(adapter, RequestKind.DETAIL)
    assert caught.value.retry_after == pause
    for group in paused:
        assert adapter.budget.group(group).paused_until - adapter.budget.now() == (
            pytest.approx(pause, abs=0.5))


def test_retry_after_is_read_only_where_the_table_says() -> None:
    class Deaf(EchoAdapter):
        errors: ClassVar[ErrorTable] = ErrorTable(penalty=20.0)

    adapter = echo(429, None, {"Retry-After": "3"}, cls=Deaf)
    with pytest.raises(BrokerRateLimited) as caught:
        call(adapter, RequestKind.LIST)
    assert caught.value.retry_after == 20.0
    assert adapter.budget.group("b").paused_until == 0  # the list kind uses "a" only


@pytest.mark.parametrize("kind", [RequestKind.CANCEL, "detial"])
def test_a_kind_without_groups_raises_before_anything_is_sent(kind: str) -> None:
    sent: list[httpx.Request] = []
    with pytest.raises(LookupError, match=rf"echo adapter: request kind '{kind}' has no limit "
                                          r"groups \(request_groups has list, detail\)"):
        call(echo(200, {"ok": 1}, sent=sent), kind)
    assert sent == []


def test_a_kind_given_as_its_value_is_that_kind() -> None:
    sent: list[httpx.Request] = []
    adapter = echo(200, {"ok": 1}, sent=sent)
    assert call(adapter, "detail") == 1 and len(sent) == 1
    assert adapter.detail_rate() == min(g.rate for g in adapter.budget.groups.values()) > 0


def test_rate_limited_with_an_unknown_kind_raises() -> None:
    adapter = echo(200)
    with pytest.raises(LookupError):
        adapter.rate_limited(RequestKind.REPLACE, "slow down")
    asyncio.run(adapter.aclose())


def test_a_config_of_another_adapter_is_refused() -> None:
    client = httpx.AsyncClient()
    with pytest.raises(TypeError, match="EchoAdapter needs a EchoConfig, got BrokerConfig"):
        EchoAdapter("ex", BrokerConfig(kind="echo", base_url="http://127.0.0.1:9"), client,
                    RateBudget([]))
    asyncio.run(client.aclose())


# -- the class check at registration ------------------------------------------------------


def variant(**attrs: Any) -> type[BrokerAdapter[Any]]:
    """EchoAdapter with some declarations changed."""
    return type("Variant", (EchoAdapter,), attrs)


@pytest.mark.parametrize(("attrs", "problems"), [
    ({}, []),
    ({"request_groups": {"list": ("a",), "detial": ("a",)}},
     ["request_groups has an unknown request kind 'detial'; did you mean 'detail'?"]),
    ({"request_groups": {RequestKind.LIST: ("a",), RequestKind.DETAIL: ("a",),
                         "purge": ("a",)}},
     ["request_groups has an unknown request kind 'purge' (known: list, detail, follow_up, "
      "replace, cancel)"]),
    ({"request_groups": {RequestKind.LIST: ("a",), RequestKind.DETAIL: ("c",)}},
     ["request_groups['detail'] names limit group 'c', which limits does not have (it has "
      "a, b)"]),
    ({"request_groups": {RequestKind.LIST: ("a",), RequestKind.DETAIL: ()}},
     ["request_groups['detail'] names no limit group"]),
    ({"request_groups": {RequestKind.LIST: ("a",)}},
     ["request_groups has no 'detail' kind, which supports_fetch needs"]),
    ({"request_groups": {RequestKind.DETAIL: ("a",)}},
     ["request_groups has no 'list' kind, which every adapter needs"]),
    ({"supports_replace": True, "supports_cancel": True},
     ["request_groups has no 'replace' kind, which supports_replace needs",
      "request_groups has no 'cancel' kind, which supports_cancel needs"]),
    ({"supports_fetch": False, "request_groups": {RequestKind.LIST: ("a",)}}, []),
])
def test_adapter_problems(attrs: dict[str, Any], problems: list[str]) -> None:
    assert adapter_problems(variant(**attrs)) == problems


def test_config_must_be_the_type_argument() -> None:
    class Mismatched(BrokerAdapter[EchoConfig]):
        kind: ClassVar[str] = "mismatched"
        request_groups: ClassVar[dict[str, tuple[str, ...]]] = {RequestKind.LIST: ("a",)}
        limits: ClassVar[dict[str, LimitSpec]] = {"a": LimitSpec(1, 1.0)}

        def scopes(self) -> list[ListScope]:
            return []

        async def list_orders(self, scope: ListScope) -> ListResult:
            raise NotImplementedError

    assert adapter_problems(Mismatched) == [
        "Config is BrokerConfig, but the class is a BrokerAdapter[EchoConfig]"]


def test_every_built_in_adapter_passes_the_class_check() -> None:
    registry = get_plugin_manager().registry()
    assert {"shioaji", "longport", "webull", "coinw"} <= set(registry.brokers)
    for cls in registry.brokers.values():
        assert adapter_problems(cls) == [], cls.kind


def test_registering_a_misspelt_request_kind_is_a_clear_config_error() -> None:
    typo = variant(kind="typo", request_groups={"list": ("a",), "detial": ("a", "b")})

    class Plugin:
        @poller.hookimpl
        def register_brokers(self, register: Any) -> None:
            register(typo)

    plugins = get_plugin_manager()
    plugins.pm.register(Plugin(), "typo-plugin")
    with pytest.raises(ConfigError) as caught:
        plugins.registry()
    assert [str(p) for p in caught.value.problems] == [
        "plugins: brokers: Variant: request_groups has an unknown request kind 'detial'; "
        "did you mean 'detail'?"]


def test_the_parse_cache_returns_the_same_snapshot_for_an_unchanged_item() -> None:
    parsed: list[str] = []

    def reader(item: dict[str, str]) -> Callable[[], OrderSnapshot]:
        def read() -> OrderSnapshot:
            parsed.append(item["id"])
            return OrderSnapshot(broker="b", broker_kind="k", account_id="A",
                                 order_id=item["id"], status=OrderStatus.SUBMITTED,
                                 broker_status=item["state"])
        return read

    cache = ParseCache()
    first = {"id": "1", "state": "open"}
    one = cache.get("A", "1", first, reader(first))
    cache.done("A")
    again = cache.get("A", "1", dict(first), reader(first))  # equal, not the same object
    changed = {"id": "2", "state": "open"}
    cache.get("A", "2", changed, reader(changed))
    cache.done("A")
    assert again is one and parsed == ["1", "2"]
    moved = {"id": "1", "state": "partial"}
    assert cache.get("A", "1", moved, reader(moved)).broker_status == "partial"
    cache.done("A")
    gone = cache.get("A", "2", changed, reader(changed))  # left the list a call ago
    assert parsed == ["1", "2", "1", "2"] and gone.order_id == "2"


def test_a_companion_request_is_not_spread_over_the_window_again() -> None:
    """A round-robin request was just admitted, so the next one waits a slot (the budget
    spreads them); a request that completes that poll (``companion``) goes at once, and
    keeps a higher priority it already had."""
    fake = FakeTime()
    group = LimitGroup("calls", LimitSpec(30, 2.0), share=0.8)
    adapter = ScriptedAdapter()
    adapter.budget = RateBudget([group], clock=fake.clock, sleep=fake.sleep)
    admitted: dict[str, float] = {}

    async def poll(name: str, companion: bool, priority: int = PRIORITY_ROUTINE) -> None:
        PRIORITY.set(priority)
        admitted[name] = await adapter.admit(("calls",), companion=companion)

    async def main() -> None:
        # Two: the spreading tolerates one slot of catching up.
        first = [asyncio.ensure_future(poll(name, False)) for name in ("first", "second")]
        await fake.run(first, [])
        tasks = [asyncio.ensure_future(poll("next", False)),
                 asyncio.ensure_future(poll("companion", True)),
                 asyncio.ensure_future(poll("action", True, PRIORITY_ACTION))]
        await fake.run(tasks, [])
        await adapter.client.aclose()

    asyncio.run(main())
    slot = 1 / group.rate
    assert admitted["first"] == admitted["second"] == 0.0
    assert admitted["companion"] == admitted["action"] == 0.0
    assert admitted["next"] == pytest.approx(slot)  # the round-robin's own spacing
