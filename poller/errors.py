"""The exceptions poller raises, and what the daemon does about each.

Every adapter (broker or notifier) translates its vendor's failures into one of these at
its edge, with ``raise Ours(...) from err``; no httpx, smtplib or vendor exception crosses
it. Whether to retry is decided by *type*: ``Retryable`` errors are tried again later,
``NeedsHuman`` errors stop that piece of work and raise an operator event. Broker error
answers are sorted from data: each adapter declares an :class:`ErrorTable` of its codes.

* PollerError
  * ConfigError ............................ bad configuration: exit 78 (EX_CONFIG)
  * BrokerError
    * BrokerUnavailable (Retryable) ........ timeouts, 5xx, connection errors
    * BrokerRateLimited (Retryable) ........ the broker said "too many requests"
    * BrokerMalformed (Retryable) .......... an answer we cannot read (not JSON, wrong shape)
    * BrokerAuthError (NeedsHuman) ......... credentials refused: stop that connection
    * BrokerRejected (NeedsHuman) .......... a request the broker refuses on its merits
      * BrokerNotFound ..................... a per-order read: the broker knows no such order
  * NotifierError
    * NotifierConfigError (NeedsHuman) ..... a notifier cannot be built from its section
    * DeliveryRetryable (Retryable) ........ 5xx, 408, timeouts, connection errors
      * DeliveryRateLimited ................ 429 / retry_after
      * DeliveryUncertain .................. the body was sent but no answer came back
    * DeliveryFailed (NeedsHuman) .......... the service refused for good (other 4xx)
  * StoreError (NeedsHuman) ................ the database cannot be used
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field


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


class BrokerAnswerTooLarge(BrokerMalformed):
    """The answer was bigger than the connection allows (``max_answer_mb``): not an outage
    and not garbage, but a limit a person sets (raise it, or narrow the list call)."""


class BrokerAuthError(BrokerError, NeedsHuman):
    """The broker refused our credentials; polling that connection stops."""


class BrokerRejected(BrokerError, NeedsHuman):
    """The broker refused a request on its merits (invalid change, order already final)."""


class BrokerNotFound(BrokerRejected):
    """The broker says it does not know the order a per-order read asked for.

    Raised only for per-order reads (detail, trades); ``fetch_order`` turns it into
    ``None``. The same answer to a list, replace or cancel stays a :class:`BrokerRejected`.
    """


_CATEGORY: dict[type[BrokerError], str] = {
    BrokerUnavailable: "unavailable",
    BrokerRateLimited: "rate_limited",
    BrokerMalformed: "malformed",
    BrokerAnswerTooLarge: "too_large",
    BrokerAuthError: "auth",
    BrokerRejected: "rejected",
    BrokerNotFound: "not_found",
}


#: What a broker error says when the table gives no words of its own for the code.
_WORDS: dict[type[BrokerError], str] = {
    BrokerUnavailable: "broker unavailable",
    BrokerRateLimited: "rate limited",
    BrokerMalformed: "unreadable answer",
    BrokerAuthError: "credentials refused",
    BrokerRejected: "refused",
    BrokerNotFound: "no such order",
}

#: HTTP answers that outrank a broker code saying less, strongest first: a 429 is a rate
#: limit and a 401/403 refused credentials whatever else the envelope's code says.
_STATUS_FIRST: tuple[type[BrokerError], ...] = (BrokerRateLimited, BrokerAuthError)


def http_error(status: int) -> type[BrokerError]:
    """The default reading of an HTTP status: 401/403 auth, 429 rate limited, 5xx unavailable,
    anything else (an error envelope in a 2xx answer, other 4xx) rejected."""
    if status in (401, 403):
        return BrokerAuthError
    if status == 429:
        return BrokerRateLimited
    if status >= 500:
        return BrokerUnavailable
    return BrokerRejected


@dataclass(frozen=True)
class ErrorAnswer:
    """An error answer as the broker's envelope states it: what an :class:`ErrorTable` sorts.

    ``code`` and ``message`` are the broker's own, ``""`` when it gave none (a bare error
    page: then only the HTTP status sorts it, and no pattern is matched against the page).
    ``status`` is an HTTP status the envelope states in place of the real one (Webull puts
    HTTP-like codes inside 200 answers).
    """

    code: str = ""
    message: str = ""
    status: int | None = None


@dataclass(frozen=True)
class ErrorTable:
    """How one broker's error answers become poller errors (ccxt's ``exceptions`` table).

    An answer is sorted in this order:

    1. ``exact[code]``, unless the HTTP status says rate limited or refused credentials and
       the code says less (a 429 stays a rate limit whatever the envelope adds);
    2. when the HTTP status says only "refused" (an error envelope in a 2xx answer, a 4xx),
       the first ``broad`` pattern (a regular expression, searched in the code, then in the
       message) that matches;
    3. the HTTP status: ``http[status]``, else :func:`http_error`.

    A :class:`BrokerNotFound` answers only a per-order read; to anything else the same
    answer is a :class:`BrokerRejected`. After a rate-limit answer without a Retry-After
    (or always, unless ``retry_after`` says to read that header), the request's limit
    groups pause for ``penalties[code]``, else ``penalty`` seconds: the broker's penalty
    window. ``meanings`` gives words to codes whose message says little.
    """

    exact: Mapping[str, type[BrokerError]] = field(default_factory=dict)
    broad: Mapping[str, type[BrokerError]] = field(default_factory=dict)
    http: Mapping[int, type[BrokerError]] = field(default_factory=dict)
    meanings: Mapping[str, str] = field(default_factory=dict)
    penalty: float = 60.0
    penalties: Mapping[str, float] = field(default_factory=dict)
    retry_after: bool = False
    _patterns: tuple[tuple[re.Pattern[str], type[BrokerError]], ...] = field(
        init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        # Compiled once, when the adapter class is defined: a bad pattern fails at import.
        object.__setattr__(self, "_patterns", tuple(
            (re.compile(pattern), cls) for pattern, cls in self.broad.items()))

    def for_status(self, status: int) -> type[BrokerError]:
        """What the HTTP status alone says: ``http``, else :func:`http_error`."""
        return self.http.get(status) or http_error(status)

    def classify(self, status: int, answer: ErrorAnswer, *, per_order: bool = True
                 ) -> type[BrokerError]:
        """The error class of one error answer (see the class docstring for the order).

        :param status: the HTTP status of the answer (``answer.status`` replaces it).
        :param per_order: whether the request was a per-order read, the only one whose
            answer can be "no such order".
        """
        by_status = self.for_status(answer.status or status)
        found = self.exact.get(answer.code) if answer.code else None
        if found is not None and _outranks(by_status, found):
            found = by_status
        if found is None and issubclass(by_status, BrokerRejected):
            found = self._match(answer)
        cls = found or by_status
        if not per_order and issubclass(cls, BrokerNotFound):
            return BrokerRejected
        return cls

    def _match(self, answer: ErrorAnswer) -> type[BrokerError] | None:
        """The class of the first ``broad`` pattern found in the code or the message."""
        texts = [text for text in (answer.code, answer.message) if text]
        return next((cls for pattern, cls in self._patterns for text in texts
                     if pattern.search(text)), None)

    def words(self, cls: type[BrokerError], code: str) -> str:
        """How an error message names what happened: the code's meaning, else the class's."""
        return self.meanings.get(code) or _WORDS.get(cls, "error")

    def penalty_for(self, code: str) -> float:
        """Seconds to pause after a rate-limit answer with ``code`` and no Retry-After."""
        return self.penalties.get(code, self.penalty)


def _outranks(by_status: type[BrokerError], by_code: type[BrokerError]) -> bool:
    """Whether the HTTP status's reading beats the code's (see :data:`_STATUS_FIRST`)."""
    if by_status not in _STATUS_FIRST:
        return False
    rank = _STATUS_FIRST.index
    return by_code not in _STATUS_FIRST or rank(by_status) < rank(by_code)


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
    """The state database cannot be opened or used.

    ``reason`` sorts the fault: ``locked`` (another process holds a lock: wait or stop it),
    ``full`` (no space: the disk, or ``daemon.max_database_mb``), ``readonly`` (file, folder
    or mount not writable), ``io`` (the device failed), ``corrupt`` (not a sound database),
    ``replaced`` (the file was deleted or swapped while in use), ``busy`` (another daemon
    runs on it), ``unreachable`` (a PostgreSQL server that does not answer), ``fenced``
    (a cluster instance lost the lease of a connection: another instance holds it now) or
    ``other``. Only ``corrupt`` ever moves a file aside.
    """

    def __init__(self, message: str, *, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def transient(self) -> bool:
        """Whether the same write may work later without anyone touching the file (a full
        disk can get space back; a lock is released)."""
        return self.reason in ("full", "locked", "io", "unreachable")
