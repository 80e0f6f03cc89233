"""Composition: from settings and plugins to validated, typed parts — apart from runtime.

:func:`validate` checks every ``[brokers.*]`` / ``[notifiers.*]`` table against its kind's
``Config`` model and the broker's documented limits (used by ``check-config``, at start and
at every reload, so all three judge a file the same way); :func:`build_budget` makes a
connection's rate budget; :func:`load` reads a file with its plugins; :func:`build_adapter`
and :func:`build_notifier` make the parts, each with its own httpx client.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from poller import budgetplan
from poller.adapter import BrokerAdapter, BrokerConfig, secret_values
from poller.errors import ConfigError, ConfigProblem
from poller.httpclient import build_client
from poller.logsetup import url_secrets
from poller.models import SceneType, SystemScene
from poller.notifiers import Notifier, NotifierConfig
from poller.plugins import Plugins, Registry, get_plugin_manager
from poller.ratelimit import LimitGroup, LimitSpec, RateBudget
from poller.settings import Settings, load_settings, problems_from, read_toml
from poller.suggest import did_you_mean

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Validated:
    """Typed configs of every connection and notifier, checked against their plugins."""

    brokers: dict[str, tuple[type[BrokerAdapter[Any]], BrokerConfig]]
    notifiers: dict[str, tuple[type[Notifier], NotifierConfig]]
    #: Secrets of the [daemon] table (the action API's token).
    daemon_secrets: tuple[str, ...] = ()

    def secrets(self) -> list[str]:
        """Every secret value in the configuration, for redaction."""
        found: list[str] = list(self.daemon_secrets)
        for cls, cfg in self.brokers.values():
            found.extend(cls.secrets(cfg))
        for _, ncfg in self.notifiers.values():
            found.extend(secret_values(ncfg))
        return found


@dataclass(frozen=True)
class Loaded:
    """A fully validated configuration with its plugins: what a start or a reload needs."""

    settings: Settings
    plugins: Plugins
    validated: Validated


def validate(settings: Settings, registry: Registry, source: str) -> Validated:
    """Check every connection and notifier table against its kind's ``Config`` model.

    :raises ConfigError: with one problem per offending key, across all tables at once.
    """
    problems: list[ConfigProblem] = []
    brokers: dict[str, tuple[type[BrokerAdapter[Any]], BrokerConfig]] = {}
    notifiers: dict[str, tuple[type[Notifier], NotifierConfig]] = {}
    for section, tables, kinds in (
        ("brokers", settings.brokers, registry.brokers),
        ("notifiers", settings.notifiers, registry.notifiers),
    ):
        for name, table in tables.items():
            kind = table.get("kind")
            if not kind:
                problems.append(ConfigProblem(source, f"{section}.{name}.kind",
                                              "required key is missing"))
                continue
            cls = kinds.get(str(kind))
            if cls is None:
                problems.append(ConfigProblem(source, f"{section}.{name}.kind",
                                              f"unknown kind {kind!r}"
                                              + did_you_mean(str(kind), kinds)))
                continue
            try:
                config = cls.Config.model_validate(table)
            except ValidationError as err:
                problems.extend(problems_from(err, source, (section, name),
                                              origins=settings.origins, model=cls.Config))
                continue
            if section == "brokers":
                assert isinstance(config, BrokerConfig)
                broker_cls: Any = cls
                for key, message in broker_cls.check(config):
                    problems.append(ConfigProblem(source, f"{section}.{name}.{key}", message))
                limit_problems = _limit_problems(broker_cls, config, source, name)
                if config.per_order_polling and not broker_cls.supports_fetch:
                    problems.append(ConfigProblem(
                        source, f"{section}.{name}.per_order_polling",
                        f"{broker_cls.kind} has no per-order call"))
                problems.extend(limit_problems)
                if not limit_problems:
                    for key, message in budgetplan.problems(broker_cls, config,
                                                            build_budget(broker_cls, config)):
                        problems.append(ConfigProblem(source, f"{section}.{name}.{key}",
                                                      message))
                brokers[name] = (broker_cls, config)
            else:
                assert isinstance(config, NotifierConfig)
                notifier_cls: Any = cls
                notifiers[name] = (notifier_cls, config)
    problems += _routing_problems(notifiers, set(settings.brokers), source)
    if problems:
        raise ConfigError(problems)
    return Validated(brokers, notifiers, tuple(secret_values(settings.daemon)))


#: Every value a notifier's ``scenes`` or ``break_through`` may name.
KNOWN_SCENES = frozenset([s.value for s in SceneType] + [s.value for s in SystemScene])


def _routing_problems(notifiers: dict[str, tuple[type[Notifier], NotifierConfig]],
                      connections: set[str], source: str) -> list[ConfigProblem]:
    """A scene or connection name a notifier routes by that does not exist would silently
    mute it: each is a problem, with the closest real name."""
    problems = []
    for name, (_, config) in notifiers.items():
        checks: list[tuple[str, str, Set[str]]] = [
            ("scenes", value, KNOWN_SCENES) for value in config.scenes]
        checks += [("brokers", value, connections) for value in config.brokers]
        if config.quiet_hours is not None:
            checks += [("quiet_hours.break_through", value, KNOWN_SCENES)
                       for value in config.quiet_hours.break_through]
        for key, value, known in checks:
            if value not in known:
                what = "scene" if key != "brokers" else "broker connection"
                problems.append(ConfigProblem(
                    source, f"notifiers.{name}.{key}",
                    f"no {what} {value!r}" + did_you_mean(value, known)))
    return problems


def _limit_problems(cls: type[BrokerAdapter[Any]], config: BrokerConfig, source: str,
                    name: str) -> list[ConfigProblem]:
    problems = []
    for group, text in config.limits.items():
        key = f"brokers.{name}.limits.{group}"
        if group not in cls.limits:
            problems.append(ConfigProblem(source, key, "unknown limit group"
                                          + did_you_mean(group, cls.limits)))
            continue
        try:
            spec = LimitSpec.parse(text)
        except ValueError as err:
            problems.append(ConfigProblem(source, key, str(err)))
            continue
        documented = cls.limits[group]
        if spec.count / spec.window > documented.count / documented.window:
            if config.limits_above_documented:
                logger.warning("%s: limit %s = %s is ABOVE the documented %s "
                               "(limits_above_documented = true): the broker may throttle or "
                               "ban this key", name, group, text, documented)
            else:
                problems.append(ConfigProblem(
                    source, key, f"{text} is above the documented limit {documented}; set "
                    "limits_above_documented = true only if the broker granted it"))
    return problems


def build_budget(cls: type[BrokerAdapter[Any]], config: BrokerConfig) -> RateBudget:
    """The rate budget of one connection: documented limits, lowered by the config."""
    groups = []
    for group, documented in cls.limits.items():
        spec = documented
        if group in config.limits:
            lowered = LimitSpec.parse(config.limits[group])
            spec = LimitSpec(lowered.count, lowered.window, documented.spacing)
        groups.append(LimitGroup(group, spec, share=config.share))
    return RateBudget(groups)


def exposed_secrets(path: Path, validated: Validated) -> str | None:
    """A warning when ``path`` is readable by other users and holds a secret in its text
    (under systemd the file is 0644 and secrets belong in credentials); else ``None``."""
    try:
        if not path.stat().st_mode & 0o044:
            return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    # A URL's secret parts are its tokens, as the redactor sees them ("https://example.com/
    # hook" holds none); short values (a port, "S") would match by accident.
    parts = [part for secret in validated.secrets()
             for part in (url_secrets(secret) if "://" in secret else [secret])]
    if not any(len(part) >= 8 and part in text for part in parts):
        return None
    return (f"{path} is readable by other users and holds a secret: put each secret in a "
            "credential file (LoadCredential=, see README \"Secrets\") or an environment "
            "variable, or make the file 0600")


def load(path: Path) -> Loaded:
    """Read, validate and load plugins for the config at ``path`` (start and SIGHUP).

    Every stage is checked even when an earlier one failed — the ``[daemon]`` table, the
    plugins, each connection and notifier — so one run reports every problem at once.

    :raises ConfigError: with every problem found.
    """
    data = read_toml(path)  # nothing to check without it
    source = str(path)
    problems: list[ConfigProblem] = []
    try:
        settings = load_settings(path, data=data)
    except ConfigError as err:
        problems += err.problems
        # Go on with the tables that did read, and a default [daemon], to find the rest.
        rest = {k: v for k, v in data.items() if k in ("brokers", "notifiers")}
        try:
            settings = load_settings(path, data=rest)
        except ConfigError:
            raise ConfigError(problems) from None
    try:
        plugins = get_plugin_manager(entry_point_names=settings.daemon.plugins,
                                     plugin_dirs=settings.daemon.plugins_dirs)
    except ConfigError as err:
        problems += err.problems
        plugins = get_plugin_manager()
    try:
        validated = validate(settings, plugins.registry(), source)
    except ConfigError as err:
        problems += err.problems
    if problems:
        raise ConfigError(problems)
    return Loaded(settings, plugins, validated)


def build_adapter(name: str, cls: type[BrokerAdapter[Any]], config: BrokerConfig
                  ) -> BrokerAdapter[Any]:
    """One connection's adapter with its own httpx client and rate budget."""
    # Room for every per-order request in flight, plus the list call and an order action: a
    # request the budget admitted must leave at once, never queue for a pooled connection.
    client = build_client(config.base_url, timeout=config.timeout,
                          connections=config.max_in_flight + 2,
                          fast=True)
    return cls(name, config, client, build_budget(cls, config))


def build_notifier(name: str, cls: type[Notifier], config: NotifierConfig) -> Notifier:
    """One notifier with its own httpx client (none for notifiers that never use HTTP)."""
    client = build_client("", timeout=config.timeout, fast=True) if cls.uses_http else None
    return cls(name, config, client)
