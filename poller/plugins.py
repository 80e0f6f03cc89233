"""Build the plugin manager and collect the broker and notifier classes plugins register.

Three sources, all through the same ``pm.register``: the built-ins (``DEFAULT_PLUGINS``),
installed distributions in entry-point group ``poller`` (imported only when the config names
them: importing runs arbitrary code), and ``*.py`` files in drop-in folders (refused when the
folder or file is writable by others). ``pm.check_pending()`` then catches misspelled hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from poller import hookspecs
from poller.adapter import BrokerAdapter, adapter_problems
from poller.errors import ConfigError, ConfigProblem
from poller.notifiers import Notifier

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "poller"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "poller.brokers.shioaji",
    "poller.brokers.coinw",
    "poller.brokers.longport",
    "poller.brokers.webull",
    "poller_plugins.console",
    "poller_plugins.webhook",
    "poller_plugins.email_smtp",
    "poller_plugins.slack",
    "poller_plugins.telegram",
    "poller_plugins.apprise_notifier",
)

HOOK_TIMEOUT = 15.0


@dataclass
class PluginInfo:
    """One registered plugin, as ``poller plugins`` lists it."""

    name: str
    source: str
    version: str
    hooks: list[str]


@dataclass
class Registry:
    """The broker and notifier classes registered by all plugins, by ``kind``."""

    brokers: dict[str, type[BrokerAdapter[Any]]] = field(default_factory=dict)
    notifiers: dict[str, type[Notifier]] = field(default_factory=dict)


class Plugins:
    """A typed facade over the pluggy manager: the rest of poller never touches ``pm.hook``."""

    def __init__(self, pm: pluggy.PluginManager, infos: list[PluginInfo]) -> None:
        self.pm = pm
        self.infos = infos

    def registry(self) -> Registry:
        """Call the ``register_*`` hooks and collect the classes, refusing duplicates."""
        registry = Registry()
        problems: list[ConfigProblem] = []

        def adder(table: dict[str, Any], base: type, what: str,
                  check: Callable[[Any], list[str]] | None = None) -> Callable[[Any], None]:
            def register(cls: Any) -> None:
                if not (inspect.isclass(cls) and issubclass(cls, base)):
                    problems.append(ConfigProblem(
                        "plugins", what, f"{cls!r} is not a {base.__name__} subclass"))
                    return
                kind = getattr(cls, "kind", "")
                found = check(cls) if check is not None else []
                if not kind:
                    problems.append(ConfigProblem("plugins", what, f"{cls.__name__} has no kind"))
                elif kind in table and table[kind] is not cls:
                    problems.append(ConfigProblem(
                        "plugins", what,
                        f"kind {kind!r} registered twice ({table[kind].__module__} and "
                        f"{cls.__module__})"))
                elif found:
                    # A class whose declarations are wrong (a misspelt request kind, a
                    # limit group it does not have) is refused here, not at its first poll.
                    problems.extend(ConfigProblem("plugins", what, f"{cls.__name__}: {p}")
                                    for p in found)
                else:
                    table[kind] = cls
            return register

        self._call_isolated("register_brokers",
                            {"register": adder(registry.brokers, BrokerAdapter, "brokers",
                                               adapter_problems)},
                            problems)
        self._call_isolated("register_notifiers",
                            {"register": adder(registry.notifiers, Notifier, "notifiers")},
                            problems)
        if problems:
            raise ConfigError(problems)
        return registry

    def _call_isolated(self, hook: str, kwargs: dict[str, Any],
                       problems: list[ConfigProblem]) -> None:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception as err:  # a plugin's bug must name the plugin, not crash us
                problems.append(ConfigProblem(
                    "plugins", impl.plugin_name, f"{hook} failed: {type(err).__name__}: {err}"))

    async def call_observers(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of an observer hook, each isolated from the others.

        pluggy stops at the first raising implementation, so each one is called on its own.
        ``async def`` implementations run on the loop, plain ones in a thread of their own
        (one that blocks — ``time.sleep``, a slow socket — must not freeze the daemon); all
        together, each within :data:`HOOK_TIMEOUT`. Failures and overruns are only logged.
        """
        calls = [self._guarded(hook, impl, kwargs)
                 for impl in getattr(self.pm.hook, hook).get_hookimpls()]
        await asyncio.gather(*calls)

    async def _guarded(self, hook: str, impl: Any, kwargs: dict[str, Any]) -> None:
        args = [kwargs[arg] for arg in impl.argnames]
        name = impl.plugin_name
        try:
            async with asyncio.timeout(HOOK_TIMEOUT):
                if inspect.iscoroutinefunction(impl.function):
                    await impl.function(*args)
                else:
                    result = await in_daemon_thread(impl.function, *args)
                    if inspect.isawaitable(result):  # a plain function returning a coroutine
                        await result
        except TimeoutError:
            logger.warning("plugin %s: %s hook took longer than %g s; not waiting for it "
                           "(a plain function that blocks keeps its thread)", name, hook,
                           HOOK_TIMEOUT)
        except Exception:
            logger.exception("plugin %s: %s hook failed", name, hook)


async def in_daemon_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a new daemon thread and await its result.

    Not ``asyncio.to_thread``: its pool's threads are joined when the interpreter exits, so
    one plugin function that never returns would keep the daemon from ever stopping.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return  # given up on (timed out): nobody waits any more
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as err:  # handed to the waiting coroutine, not lost
            with contextlib.suppress(RuntimeError):  # the loop may be gone by now
                loop.call_soon_threadsafe(settle, None, err)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=f"plugin-{getattr(fn, '__name__', 'hook')}",
                     daemon=True).start()
    return await future


def get_plugin_manager(
    *,
    entry_point_names: Sequence[str] = (),
    plugin_dirs: Iterable[Path] = (),
    builtins: Sequence[str] = DEFAULT_PLUGINS,
) -> Plugins:
    """Build the plugin manager: built-ins, named entry points, drop-in folders.

    :raises ConfigError: a named entry point is not installed, a drop-in folder or file is
        unsafe or fails to import, or a plugin implements a hook that does not exist.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    registered: list[tuple[PluginInfo, object]] = []
    problems: list[ConfigProblem] = []

    for dotted in dict.fromkeys(builtins):
        module = importlib.import_module(dotted)
        pm.register(module, dotted)
        registered.append((PluginInfo(dotted, "built-in", _own_version(), []), module))

    wanted = list(dict.fromkeys(entry_point_names))
    if wanted:
        available = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        for name in wanted:
            ep = available.get(name)
            if ep is None:
                problems.append(ConfigProblem(
                    "daemon.plugins", name,
                    f"no installed plugin of that name (entry point group '{ENTRY_POINT_GROUP}')"))
                continue
            try:
                loaded: ModuleType = ep.load()
            except Exception as err:
                problems.append(ConfigProblem("daemon.plugins", name,
                                              f"failed to import: {type(err).__name__}: {err}"))
                continue
            pm.register(loaded, f"entrypoint:{name}")
            dist = ep.dist
            registered.append((PluginInfo(
                name, f"entry point {ep.value}",
                f"{dist.name} {dist.version}" if dist else "?", []), loaded))

    for folder in plugin_dirs:
        for path, dropin, problem in _load_dropins(Path(folder)):
            if problem:
                problems.append(ConfigProblem("daemon.plugins_dirs", str(path), problem))
            elif dropin is not None:
                pm.register(dropin, f"dropin:{path}")
                registered.append((PluginInfo(path.stem, f"drop-in {path}", "-", []), dropin))
    if problems:
        raise ConfigError(problems)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        raise ConfigError([ConfigProblem("plugins", "hooks", f"unknown hook: {err}")]) from None
    for info, plugin in registered:
        info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return Plugins(pm, [info for info, _ in registered])


def _own_version() -> str:
    from poller.__about__ import __version__

    return __version__


def _unsafe(path: Path) -> str | None:
    """Why a drop-in folder or file must not be trusted, or None."""
    info = path.stat()
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is writable by other users; refusing to load code from it (chmod go-w)"
    if info.st_uid not in (0, os.geteuid()):
        return "is owned by another user; refusing to load code from it"
    return None


def _load_dropins(folder: Path) -> list[tuple[Path, ModuleType | None, str | None]]:
    if not folder.is_dir():
        return [(folder, None, "is not a directory")]
    problem = _unsafe(folder)
    if problem:
        return [(folder, None, problem)]
    loaded: list[tuple[Path, ModuleType | None, str | None]] = []
    for path in sorted(folder.glob("*.py")):
        problem = _unsafe(path)
        if problem:
            loaded.append((path, None, problem))
            continue
        name = f"poller_dropin_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            loaded.append((path, None, "cannot be imported"))
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            sys.modules.pop(name, None)
            loaded.append((path, None, f"failed to import: {type(err).__name__}: {err}"))
            continue
        loaded.append((path, module, None))
    return loaded
