"""poller: watch orders at several brokers and notify once per transition.

The public surface for plugins: import from here, never from submodules.
"""

from __future__ import annotations

from poller.__about__ import __version__
from poller.brokers.base import BrokerAdapter, BrokerConfig, ListResult, ListScope
from poller.errors import (
    BrokerAuthError,
    BrokerError,
    BrokerMalformed,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    ConfigError,
    DeliveryFailed,
    DeliveryRateLimited,
    DeliveryRetryable,
    DeliveryUncertain,
    NotifierConfigError,
    NotifierError,
    PollerError,
)
from poller.hookspecs import hookimpl
from poller.logsetup import Redactor
from poller.models import Fill, OrderEvent, OrderSnapshot, OrderStatus, SceneType
from poller.notifiers import Notifier, NotifierConfig, classify, post
from poller.ratelimit import LimitGroup, LimitSpec, RateBudget
from poller.templates import Message

__all__ = [
    "BrokerAdapter",
    "BrokerAuthError",
    "BrokerConfig",
    "BrokerError",
    "BrokerMalformed",
    "BrokerRateLimited",
    "BrokerRejected",
    "BrokerUnavailable",
    "ConfigError",
    "DeliveryFailed",
    "DeliveryRateLimited",
    "DeliveryRetryable",
    "DeliveryUncertain",
    "Fill",
    "LimitGroup",
    "LimitSpec",
    "ListResult",
    "ListScope",
    "Message",
    "Notifier",
    "NotifierConfig",
    "NotifierConfigError",
    "NotifierError",
    "OrderEvent",
    "OrderSnapshot",
    "OrderStatus",
    "PollerError",
    "RateBudget",
    "Redactor",
    "SceneType",
    "__version__",
    "classify",
    "hookimpl",
    "post",
]
