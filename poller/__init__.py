"""poller: watch orders at several brokers and notify once per transition.

The public surface for plugins and adapters (ours too): import from here, never from
submodules. A test scans ``plugins/`` and ``poller/brokers/`` for imports of private modules.
"""

from __future__ import annotations

from poller.__about__ import __version__
from poller.adapter import (
    BrokerAdapter,
    BrokerConfig,
    ListResult,
    ListScope,
    ParseCache,
    RequestKind,
    Success,
    first_problem,
)
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
)
from poller.events import OrderEvent
from poller.hookspecs import hookimpl
from poller.httpclient import Answer, is_loopback, retry_after_seconds, send
from poller.logsetup import LogScrubber, Redactor
from poller.models import (
    Fill,
    OrderSnapshot,
    OrderStatus,
    SceneType,
    decimal_text,
    to_decimal,
    utcnow,
)
from poller.notifiers import Notifier, NotifierConfig, classify, post
from poller.pacing import Pace
from poller.pushfeed import CONNECTED, PushedOrder, PushStream
from poller.ratelimit import LimitGroup, LimitSpec, RateBudget
from poller.templates import Message
from poller.timetext import printable, shown_time

__all__ = [
    "Answer",
    "BrokerAdapter",
    "BrokerAnswerTooLarge",
    "BrokerAuthError",
    "BrokerConfig",
    "BrokerError",
    "BrokerMalformed",
    "BrokerNotFound",
    "BrokerRateLimited",
    "BrokerRejected",
    "BrokerUnavailable",
    "CONNECTED",
    "ConfigError",
    "DeliveryFailed",
    "DeliveryRateLimited",
    "DeliveryRetryable",
    "DeliveryUncertain",
    "ErrorAnswer",
    "ErrorTable",
    "Fill",
    "LimitGroup",
    "LimitSpec",
    "ListResult",
    "ListScope",
    "LogScrubber",
    "Message",
    "NeedsHuman",
    "Notifier",
    "NotifierConfig",
    "NotifierConfigError",
    "NotifierError",
    "OrderEvent",
    "OrderSnapshot",
    "OrderStatus",
    "Pace",
    "ParseCache",
    "PollerError",
    "PushStream",
    "PushedOrder",
    "RateBudget",
    "Redactor",
    "RequestKind",
    "Retryable",
    "SceneType",
    "Success",
    "__version__",
    "classify",
    "decimal_text",
    "first_problem",
    "hookimpl",
    "is_loopback",
    "post",
    "printable",
    "retry_after_seconds",
    "send",
    "shown_time",
    "to_decimal",
    "utcnow",
]
