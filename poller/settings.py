"""Configuration: one TOML file read through pydantic-settings (design.md §8).

Priority, highest first: ``POLLER_*`` environment variables > secret files in
``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``) > the TOML file. The file is ``-c
PATH``, else ``$POLLER_CONFIG``, else ``/etc/poller/config.toml``.

``[brokers.NAME]`` and ``[notifiers.NAME]`` tables are validated against the ``Config`` model
of the adapter or notifier their ``kind`` names, once the plugins are loaded
(:func:`poller.app.build_app` does that); unknown keys are errors everywhere.

Secrets of a connection can come from outside the file:
``POLLER_BROKERS__<NAME>__<KEY>`` (NAME upper-cased, ``-`` written ``_``) or a file
``$CREDENTIALS_DIRECTORY/brokers.<name>.<key>``; the same for notifiers.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from poller.databaseurl import DatabaseUrl, looks_like_url
from poller.errors import ConfigError, ConfigProblem
from poller.suggest import did_you_mean

DEFAULT_CONFIG = Path("/etc/poller/config.toml")
SECTIONS = ("brokers", "notifiers")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


#: ``[daemon]`` keys that are secrets, also read from systemd credential files.
DAEMON_SECRETS = ("api_token", "heartbeat_url", "database_password")


class DaemonSettings(BaseModel):
    """The ``[daemon]`` table."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, frozen=True)

    database: Path | DatabaseUrl = Field(
        default=Path("/var/lib/poller/poller.db"),
        description="The state database (orders, events, outbox): a SQLite file path, or a "
                    "postgresql://user@host:5432/dbname URL shared by several instances "
                    "(password in daemon.database_password, never in the URL).",
    )
    database_password: SecretStr | None = Field(default=None, description=(
        "The PostgreSQL password (POLLER_DAEMON__DATABASE_PASSWORD or a credential file)."))
    lease_seconds: float = Field(default=10.0, ge=3, le=120, description=(
        "PostgreSQL: how long a connection's lease lasts unrenewed (the take-over bound)."))
    announce_existing: bool = Field(
        default=False,
        description="Announce orders that already exist when an account is first polled.",
    )
    plugins: list[str] = Field(
        default_factory=list,
        description="Installed plugins (entry points in group 'poller') to load, by name.",
    )
    plugins_dirs: list[Path] = Field(
        default_factory=list, description="Folders of drop-in *.py plugins."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level of log lines printed."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text for people, json for journald/ingest."
    )
    stale_after: int = Field(
        default=3, ge=1, description="Polls an open order may be missing before it is stale."
    )
    shutdown_grace: float = Field(
        default=10.0, gt=0, description="Seconds to flush deliveries when stopping."
    )
    health_listen: str = Field(
        default="",
        description='Serve /healthz and /metrics on this loopback address, e.g. '
                    '"127.0.0.1:9108"; empty (the default) turns them off.',
    )
    api_listen: str = Field(
        default="",
        description='Serve the order-action API on this loopback address, e.g. '
                    '"127.0.0.1:9109"; empty (the default) turns it off.',
    )
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token the action API requires (needed with "
                                  "api_listen).")
    action_expiry: float = Field(
        default=300.0, gt=0,
        description="Seconds a queued replace or cancel may wait for a running daemon; "
                    "older ones are not sent (outcome EXPIRED).",
    )
    max_database_mb: float | None = Field(
        default=None, gt=0,
        description="Cap the state database at this many MiB (protects a small disk); past "
                    "it commits fail as on a full disk and are retried. Default: no cap.",
    )
    give_up_after: float = Field(
        default=24 * 3600.0, gt=0,
        description="Seconds after which an undeliverable message is dead-lettered.",
    )

    alert_repeat_interval: float = Field(
        default=4 * 3600.0, ge=60,
        description="Seconds between reminders of an operator problem that lasts (one event "
                    "when it starts, reminders at this interval, one when it resolves).",
    )
    backlog_alert_after: float = Field(
        default=900.0, gt=0,
        description="A notifier whose oldest waiting message is older than this many seconds "
                    "makes /healthz 'degraded' and is reported as a problem.",
    )
    heartbeat_url: SecretStr | None = Field(
        default=None,
        description="Dead-man's switch: a Healthchecks-style URL pinged after healthy cycles "
                    "(URL/start at start, URL when healthy, URL/fail with the reason). A "
                    "secret: its path identifies the check.",
    )
    heartbeat_interval: float = Field(
        default=60.0, ge=1, description="Seconds between heartbeat pings, at least.")

    @field_validator("database", mode="before")
    @classmethod
    def _database(cls, value: Any) -> Any:
        return DatabaseUrl.parse(value) if isinstance(value, str) and looks_like_url(value) \
            else value

    @field_validator("heartbeat_url")
    @classmethod
    def _heartbeat_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            url = value.get_secret_value()
            if not url.startswith(("http://", "https://")) or "://" == url[-3:]:
                raise ValueError("heartbeat_url must be an http:// or https:// URL")
        return value

    @field_validator("health_listen", "api_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            parse_listen(value)
        return value

    @model_validator(mode="after")
    def _api_token(self) -> DaemonSettings:
        token = self.api_token.get_secret_value() if self.api_token else ""
        if self.api_listen and len(token) < 16:
            raise ValueError("api_listen needs an api_token of at least 16 characters")
        return self


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` → (host, port); only loopback addresses are allowed."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"not host:port: {value!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range: {number}")
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError(f"{host} is not a loopback address; health and metrics are "
                                 "only served on loopback")
        except ValueError as err:
            raise ValueError(str(err)) from None
    return host, number


class Settings(BaseSettings):
    """The whole configuration, built once at start (and again on reload) and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="POLLER_",
        env_nested_delimiter="__",
        extra="forbid",
        hide_input_in_errors=True,
        frozen=True,
    )

    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    brokers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    notifiers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: Where a value came from when not from the file: dotted key → "environment variable
    #: POLLER_…" or "credential file …", so a problem with it names the right place.
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def origins(self) -> dict[str, str]:
        """Dotted keys set from the environment or a credential file, and where from."""
        return self._origins

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """One source: :func:`load_settings` has already merged, in priority order, the
        ``POLLER_*`` environment, the credentials directory and the TOML file (it needs the
        connection names from the file to map ``POLLER_BROKERS__<NAME>__*`` onto them)."""
        return (init_settings,)


def config_path(cli_path: str | Path | None) -> Path:
    """``-c PATH``, else ``$POLLER_CONFIG``, else ``/etc/poller/config.toml``."""
    if cli_path:
        return Path(cli_path)
    env = os.environ.get("POLLER_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def read_toml(path: Path) -> dict[str, Any]:
    """Parse the config file, turning every failure into a one-line :class:`ConfigError`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(path), "", "no such file")]) from None
    except OSError as err:
        raise ConfigError([ConfigProblem(str(path), "", f"cannot read: {err.strerror}")]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem(str(path), "", "not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([ConfigProblem(str(path), "", f"invalid TOML: {err}")]) from None


def load_settings(
    path: Path | None = None,
    *,
    data: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from a TOML file (or already-parsed ``data``).

    :raises ConfigError: with one :class:`ConfigProblem` per offending key; secret values
        never appear in its text.
    """
    source = str(path) if path is not None else "<config>"
    if data is None:
        if path is None:
            raise ValueError("load_settings needs a path or data")
        data = read_toml(path)
    environ = dict(os.environ if environ is None else environ)
    problems: list[ConfigProblem] = []
    for section in SECTIONS:
        tables = data.get(section, {})
        if not isinstance(tables, dict):
            problems.append(ConfigProblem(source, section, "must be a table of named tables"))
            continue
        for name, table in tables.items():
            if not _NAME.match(name):
                problems.append(ConfigProblem(
                    source, f"{section}.{name}",
                    "names use letters, digits, '-', '_' and '.' (at most 64)",
                ))
            if not isinstance(table, dict):
                problems.append(ConfigProblem(source, f"{section}.{name}", "must be a table"))
    if problems:
        raise ConfigError(problems)
    origins: dict[str, str] = {}
    merged = _overlay(data, environ, origins)
    try:
        settings = Settings(**merged)
    except ValidationError as err:
        raise ConfigError(problems_from(err, source, origins=origins,
                                        model=Settings)) from None
    settings._origins.update(origins)
    return settings


def _overlay(data: dict[str, Any], environ: dict[str, str],
             origins: dict[str, str]) -> dict[str, Any]:
    """Merge daemon and connection keys from the environment and the credentials directory,
    noting in ``origins`` where each came from."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    daemon = merged.get("daemon")
    daemon = dict(daemon) if isinstance(daemon, dict) else {}
    creds = environ.get("CREDENTIALS_DIRECTORY")
    for secret in DAEMON_SECRETS:  # systemd LoadCredential=daemon.<key>:/path
        path = Path(creds) / f"daemon.{secret}" if creds else None
        if path is not None and path.is_file():
            daemon[secret] = path.read_text(encoding="utf-8").rstrip("\r\n")
            origins[f"daemon.{secret}"] = f"credential file {path}"
    for var, value in environ.items():
        if var.upper().startswith("POLLER_DAEMON__"):
            key = var[len("POLLER_DAEMON__"):].lower()
            daemon[key] = _env_value(value)
            origins[f"daemon.{key}"] = f"environment variable {var}"
    if daemon:
        merged["daemon"] = daemon
    for section in SECTIONS:
        tables = {name: dict(table) for name, table in merged.get(section, {}).items()}
        for name, table in tables.items():
            if creds:
                prefix = f"{section}.{name}."
                folder = Path(creds)
                if folder.is_dir():
                    for entry in sorted(folder.iterdir()):
                        if entry.name.startswith(prefix) and entry.is_file():
                            key = entry.name[len(prefix):]
                            table[key] = entry.read_text(encoding="utf-8").rstrip("\r\n")
                            origins[f"{section}.{name}.{key}"] = f"credential file {entry}"
            env_prefix = f"POLLER_{section.upper()}__{_env_name(name)}__"
            for var, value in environ.items():
                if var.upper().startswith(env_prefix):
                    key = var[len(env_prefix):].lower()
                    table[key] = value
                    origins[f"{section}.{name}.{key}"] = f"environment variable {var}"
        if tables:
            merged[section] = tables
    return merged


def _env_value(value: str) -> Any:
    """Environment values are strings; lists and tables may be given as JSON."""
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _env_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def problems_from(
    error: ValidationError, source: str, prefix: tuple[str | int, ...] = (), *,
    origins: dict[str, str] | None = None, model: type[BaseModel] | None = None,
) -> list[ConfigProblem]:
    """One :class:`ConfigProblem` per pydantic error, worded for people, without values.

    :param origins: dotted keys that came from the environment or a credential file: a
        problem with one is reported under that name, not as a key of the file.
    :param model: the model validated, so an unknown key gets a "did you mean".
    """
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        loc = tuple(item["loc"])
        key = ".".join(str(part) for part in (*prefix, *loc))
        kind = item["type"]
        if kind == "extra_forbidden":
            message = "unknown key" + did_you_mean(str(loc[-1]), _fields_at(model, loc[:-1]))
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = item["msg"]
            if message.startswith("Value error, "):
                message = message.removeprefix("Value error, ")
        origin = (origins or {}).get(key)
        if origin is not None:
            problems.append(ConfigProblem(origin, "", f"{key}: {message}"))
        else:
            problems.append(ConfigProblem(source, key, message))
    return problems


def _fields_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The keys a model accepts at ``loc`` (a nested model's, a table's of models)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []  # a key of a dict (a connection's name): look inside its values
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel class inside ``X | None`` or ``list[X]`` (else the annotation)."""
    for arg in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation
