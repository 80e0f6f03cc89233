"""The exceptions poller raises, and what the daemon does about each.

Every adapter (broker or notifier) translates its vendor's failures into one of these at
its edge, with ``raise Ours(...) from err``; no httpx, smtplib or vendor exception crosses
it. Whether to retry is decided by *type*: ``Retryable`` errors are tried again later,
``NeedsHuman`` errors stop that piece of work and raise an operator event.

* PollerError
  * ConfigError ............................ bad configuration: exit 78 (EX_CONFIG)
  * BrokerError
    * BrokerUnavailable (Retryable) ........ timeouts, 5xx, connection errors
    * BrokerRateLimited (Retryable) ........ the broker said "too many requests"
    * BrokerMalformed (Retryable) .......... an answer we cannot read (not JSON, wrong shape)
    * BrokerAuthError (NeedsHuman) ......... credentials refused: stop that connection
    * BrokerRejected (NeedsHuman) .......... a request the broker refuses on its merits
  * NotifierError
    * NotifierConfigError (NeedsHuman) ..... a notifier cannot be built from its section
    * DeliveryRetryable (Retryable) ........ 5xx, 408, timeouts, connection errors
      * DeliveryRateLimited ................ 429 / retry_after
      * DeliveryUncertain .................. the body was sent but no answer came back
    * DeliveryFailed (NeedsHuman) .......... the service refused for good (other 4xx)
  * StoreError (NeedsHuman) ................ the database cannot be used
"""

from __future__ import annotations

from dataclasses import dataclass


class PollerError(Exception):
    """Base class of every error poller raises on purpose."""


class Retryable:
    """Marker: the same work may succeed if tried again later."""


class NeedsHuman:
    """Marker: trying again will not help until a person changes something."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration: where it is and what is wrong."""

    source: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}" if self.key else self.source
        return f"{where}: {self.message}"


class ConfigError(PollerError):
    """The configuration cannot be used; carries one problem per offending key."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class BrokerError(PollerError):
    """A broker request did not give a usable answer."""

    def __init__(self, message: str, *, connection: str = "", code: str = "") -> None:
        self.connection = connection
        self.code = code
        super().__init__(message)

    @property
    def category(self) -> str:
        """A short stable name for logs and metrics (``unavailable``, ``auth``...)."""
        return _CATEGORY.get(type(self), "error")


class BrokerUnavailable(BrokerError, Retryable):
    """The broker could not be reached or failed on its side (timeout, 5xx, reset)."""


class BrokerRateLimited(BrokerError, Retryable):
    """The broker refused a request for being too frequent.

    ``retry_after`` is the pause the broker asked for, in seconds, when it said one.
    """

    def __init__(
        self,
        message: str,
        *,
        connection: str = "",
        code: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, connection=connection, code=code)
        self.retry_after = retry_after


class BrokerMalformed(BrokerError, Retryable):
    """The broker answered with something we cannot read (not JSON, wrong shape)."""


class BrokerAuthError(BrokerError, NeedsHuman):
    """The broker refused our credentials; polling that connection stops."""


class BrokerRejected(BrokerError, NeedsHuman):
    """The broker refused a request on its merits (unknown order, invalid change)."""


_CATEGORY: dict[type[BrokerError], str] = {
    BrokerUnavailable: "unavailable",
    BrokerRateLimited: "rate_limited",
    BrokerMalformed: "malformed",
    BrokerAuthError: "auth",
    BrokerRejected: "rejected",
}


class NotifierError(PollerError):
    """A notifier could not be built or could not deliver."""


class NotifierConfigError(NotifierError, NeedsHuman):
    """A notifier's configuration section cannot be used."""


class DeliveryRetryable(NotifierError, Retryable):
    """The service did not accept the message this time; try again later.

    ``retry_after`` is the pause the service asked for, in seconds, when it said one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeliveryRateLimited(DeliveryRetryable):
    """The service asked us to slow down (HTTP 429, Telegram ``retry_after``)."""


class DeliveryUncertain(DeliveryRetryable):
    """The message was sent but no answer came back; it may or may not have arrived."""


class DeliveryFailed(NotifierError, NeedsHuman):
    """The service refused the message for good (a 4xx other than 408/429)."""


class StoreError(PollerError, NeedsHuman):
    """The state database cannot be opened or used."""
