"""The error classes: which are retried and which stop for a human, categories, config text,
and the error tables that sort broker answers into them."""

from __future__ import annotations

import inspect
import re

import pytest

from poller import errors
from poller.errors import (
    BrokerAnswerTooLarge,
    BrokerAuthError,
    BrokerError,
    BrokerMalformed,
    BrokerNotFound,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    ConfigError,
    ConfigProblem,
    DeliveryFailed,
    DeliveryRateLimited,
    DeliveryRetryable,
    DeliveryUncertain,
    ErrorAnswer,
    ErrorTable,
    NeedsHuman,
    NotifierConfigError,
    NotifierError,
    PollerError,
    Retryable,
    StoreError,
    http_error,
)

#: Every error class: its parent in the tree and its marker (None: neither, a base or exit).
TREE: dict[type[PollerError], tuple[type[PollerError] | None, type | None]] = {
    PollerError: (None, None),
    ConfigError: (PollerError, None),
    BrokerError: (PollerError, None),
    BrokerUnavailable: (BrokerError, Retryable),
    BrokerRateLimited: (BrokerError, Retryable),
    BrokerMalformed: (BrokerError, Retryable),
    BrokerAnswerTooLarge: (BrokerMalformed, Retryable),
    BrokerAuthError: (BrokerError, NeedsHuman),
    BrokerRejected: (BrokerError, NeedsHuman),
    BrokerNotFound: (BrokerRejected, NeedsHuman),
    NotifierError: (PollerError, None),
    NotifierConfigError: (NotifierError, NeedsHuman),
    DeliveryRetryable: (NotifierError, Retryable),
    DeliveryRateLimited: (DeliveryRetryable, Retryable),
    DeliveryUncertain: (DeliveryRetryable, Retryable),
    DeliveryFailed: (NotifierError, NeedsHuman),
    StoreError: (PollerError, NeedsHuman),
}


def test_the_table_names_every_error_class_of_the_module() -> None:
    """A new error class must be placed in the table (and so given a marker on purpose)."""
    defined = {cls for _, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, PollerError) and cls.__module__ == errors.__name__}
    assert defined == set(TREE)


@pytest.mark.parametrize("cls", list(TREE), ids=lambda c: c.__name__)
def test_parent_and_marker(cls: type[PollerError]) -> None:
    parent, marker = TREE[cls]
    if parent is not None:
        assert parent in cls.__mro__[1:]
    assert issubclass(cls, Retryable) == (marker is Retryable)
    assert issubclass(cls, NeedsHuman) == (marker is NeedsHuman)
    assert not (issubclass(cls, Retryable) and issubclass(cls, NeedsHuman))


@pytest.mark.parametrize(("cls", "category"), [
    (BrokerUnavailable, "unavailable"),
    (BrokerRateLimited, "rate_limited"),
    (BrokerMalformed, "malformed"),
    (BrokerAnswerTooLarge, "too_large"),
    (BrokerAuthError, "auth"),
    (BrokerRejected, "rejected"),
    (BrokerNotFound, "not_found"),
    (BrokerError, "error"),
])
def test_category_of_each_broker_error(cls: type[BrokerError], category: str) -> None:
    err = cls("HTTP 503", connection="tw", code="E42")
    assert err.category == category
    assert (str(err), err.connection, err.code) == ("HTTP 503", "tw", "E42")


def test_broker_error_defaults_and_rate_limit_pause() -> None:
    plain = BrokerUnavailable("down")
    assert (plain.connection, plain.code) == ("", "")
    assert BrokerRateLimited("slow down").retry_after is None
    limited = BrokerRateLimited("slow down", connection="cw", code="429", retry_after=2.5)
    assert (limited.retry_after, limited.connection, limited.code) == (2.5, "cw", "429")


@pytest.mark.parametrize("cls", [DeliveryRetryable, DeliveryRateLimited, DeliveryUncertain])
def test_delivery_retry_after(cls: type[DeliveryRetryable]) -> None:
    assert cls("HTTP 503").retry_after is None
    err = cls("HTTP 429", retry_after=30.0)
    assert (str(err), err.retry_after) == ("HTTP 429", 30.0)


@pytest.mark.parametrize(("problem", "text"), [
    (ConfigProblem("/etc/poller.toml", "brokers.tw.interval", "must be > 0"),
     "/etc/poller.toml: brokers.tw.interval: must be > 0"),
    (ConfigProblem("/etc/poller.toml", "", "not valid TOML (line 3)"),
     "/etc/poller.toml: not valid TOML (line 3)"),
    (ConfigProblem("plugins", "dropin:x.py", "failed to import"),
     "plugins: dropin:x.py: failed to import"),
])
def test_config_problem_text(problem: ConfigProblem, text: str) -> None:
    assert str(problem) == text


def test_config_error_carries_every_problem() -> None:
    problems = [ConfigProblem("c.toml", "brokers.a.kind", "required key is missing"),
                ConfigProblem("c.toml", "", "bad")]
    err = ConfigError(problems)
    assert err.problems == problems
    assert str(err) == "c.toml: brokers.a.kind: required key is missing; c.toml: bad"


def test_config_problem_is_a_value() -> None:
    a = ConfigProblem("s", "k", "m")
    assert a == ConfigProblem("s", "k", "m") and len({a, ConfigProblem("s", "k", "m")}) == 1
    with pytest.raises(AttributeError):
        a.key = "other"  # type: ignore[misc]


@pytest.mark.parametrize(("status", "cls"), [
    (401, BrokerAuthError), (403, BrokerAuthError), (429, BrokerRateLimited),
    (500, BrokerUnavailable), (503, BrokerUnavailable), (599, BrokerUnavailable),
    (400, BrokerRejected), (404, BrokerRejected), (409, BrokerRejected), (200, BrokerRejected),
])
def test_http_error(status: int, cls: type[BrokerError]) -> None:
    assert http_error(status) is cls


TABLE = ErrorTable(
    exact={"E_AUTH": BrokerAuthError, "E_LIMIT": BrokerRateLimited, "E_NOORDER": BrokerNotFound,
           "E_BUSY": BrokerUnavailable},
    broad={r"(?i)order not found": BrokerNotFound, r"^MAINT-": BrokerUnavailable},
    http={418: BrokerUnavailable},
    meanings={"E_BUSY": "matching engine busy"},
    penalty=30.0, penalties={"E_LIMIT": 120.0},
)


@pytest.mark.parametrize(("status", "answer", "per_order", "cls"), [
    (400, ErrorAnswer("E_BUSY"), True, BrokerUnavailable),  # the code decides
    (429, ErrorAnswer("E_BUSY"), True, BrokerRateLimited),  # ... unless the status says more
    (403, ErrorAnswer("E_BUSY"), True, BrokerAuthError),
    (429, ErrorAnswer("E_AUTH"), True, BrokerRateLimited),  # a rate limit outranks auth
    (401, ErrorAnswer("E_LIMIT"), True, BrokerRateLimited),
    (503, ErrorAnswer("E_AUTH"), True, BrokerAuthError),  # 5xx says less than the code
    (200, ErrorAnswer("X9", "Order not found"), True, BrokerNotFound),  # pattern in message
    (400, ErrorAnswer("MAINT-7", "please wait"), True, BrokerUnavailable),  # ... in the code
    (503, ErrorAnswer("X9", "order not found"), True, BrokerUnavailable),  # only "refused"
    (200, ErrorAnswer("X9", "something else"), True, BrokerRejected),
    (502, ErrorAnswer(), True, BrokerUnavailable),
    (418, ErrorAnswer(), True, BrokerUnavailable),  # the table's own status reading
    (200, ErrorAnswer("X9", status=429), True, BrokerRateLimited),  # the envelope's status
    (404, ErrorAnswer("E_NOORDER"), True, BrokerNotFound),
    (404, ErrorAnswer("E_NOORDER"), False, BrokerRejected),  # only a per-order read
    (200, ErrorAnswer("X9", "order not found"), False, BrokerRejected),
])
def test_error_table_classify(status: int, answer: ErrorAnswer, per_order: bool,
                              cls: type[BrokerError]) -> None:
    assert TABLE.classify(status, answer, per_order=per_order) is cls


def test_a_bare_error_page_matches_no_pattern() -> None:
    table = ErrorTable(broad={".*": BrokerUnavailable})
    assert table.classify(400, ErrorAnswer()) is BrokerRejected
    assert table.classify(400, ErrorAnswer(message="x")) is BrokerUnavailable


def test_error_table_words_and_penalties() -> None:
    assert TABLE.words(BrokerUnavailable, "E_BUSY") == "matching engine busy"
    assert [TABLE.words(cls, "X9") for cls in (
        BrokerUnavailable, BrokerRateLimited, BrokerMalformed, BrokerAuthError, BrokerRejected,
        BrokerNotFound, BrokerError)] == [
        "broker unavailable", "rate limited", "unreadable answer", "credentials refused",
        "refused", "no such order", "error"]
    assert (TABLE.penalty_for("E_LIMIT"), TABLE.penalty_for("X9")) == (120.0, 30.0)
    assert ErrorTable().penalty_for("X9") == 60.0


def test_a_bad_pattern_fails_when_the_table_is_made() -> None:
    with pytest.raises(re.error):
        ErrorTable(broad={"(unclosed": BrokerRejected})
