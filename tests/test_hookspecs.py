"""The hook specifications: project name, docstrings, keyword-only calls and the freedom
an implementation has in the arguments it takes. (README coverage: tests/test_plugins.py.)"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pluggy
import pytest

import poller
from poller import hookspecs
from poller.plugins import ENTRY_POINT_GROUP, get_plugin_manager

HOOKS = {"register_brokers": ("register",), "register_notifiers": ("register",),
         "startup": ("app",), "shutdown": ("app",), "order_event": ("event",)}


def specs() -> dict[str, Callable[..., Any]]:
    return {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(fn, "poller_spec")}


def manager() -> pluggy.PluginManager:
    """The real plugin manager, without the built-in plugins."""
    return get_plugin_manager(builtins=()).pm


def test_the_pluggy_project_is_poller() -> None:
    assert hookspecs.hookspec.project_name == hookspecs.hookimpl.project_name == "poller"
    assert ENTRY_POINT_GROUP == "poller" and manager().project_name == "poller"
    assert poller.hookimpl is hookspecs.hookimpl


def test_implementations_marked_for_another_project_are_not_hooks() -> None:
    other = pluggy.HookimplMarker("other")
    calls: list[str] = []

    class Foreign:
        @other
        def order_event(self, event: Any) -> None:
            calls.append("foreign")

    class Ours:
        @poller.hookimpl
        def order_event(self, event: Any) -> None:
            calls.append("ours")

    pm = manager()
    pm.register(Foreign())
    pm.register(Ours())
    pm.hook.order_event(event="E")
    assert calls == ["ours"]


def test_the_hooks_and_their_arguments() -> None:
    assert {name: tuple(inspect.signature(fn).parameters) for name, fn in specs().items()} \
        == HOOKS


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_each_hook_documents_itself_and_each_argument(name: str) -> None:
    doc = inspect.getdoc(specs()[name]) or ""
    summary = doc.splitlines()[0] if doc else ""
    assert summary.endswith(".") and len(summary) > 20, summary
    for arg in HOOKS[name]:
        assert f":param {arg}:" in doc


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_implementation_is_called(name: str) -> None:
    """No hook stops at the first answer or replays to late registrations."""
    spec = getattr(manager().hook, name).spec
    assert spec is not None
    assert (spec.opts["firstresult"], spec.opts["historic"]) == (False, False)
    assert spec.argnames == HOOKS[name]


def test_hooks_are_called_with_keywords_only() -> None:
    pm = manager()
    with pytest.raises(TypeError):
        pm.hook.order_event("an event")  # type: ignore[call-arg]
    with pytest.warns(UserWarning, match="'event' which are declared in the hookspec"):
        pm.hook.order_event()


def test_an_implementation_takes_any_subset_of_the_arguments() -> None:
    seen: list[tuple[str, Any]] = []

    class Bare:
        @poller.hookimpl
        def startup(self) -> str:
            seen.append(("bare", None))
            return "bare"

    class Full:
        @poller.hookimpl
        def startup(self, app: Any) -> str:
            seen.append(("full", app))
            return "full"

    pm = manager()
    pm.register(Bare())
    pm.register(Full())
    # An argument added to a later poller reaches nobody who did not ask for it.
    results = pm.hook.startup(app="the app", added_later=42)
    assert sorted(results) == ["bare", "full"]
    assert sorted(seen, key=lambda s: s[0]) == [("bare", None), ("full", "the app")]


def test_an_implementation_asking_for_an_unknown_argument_is_refused() -> None:
    class Wrong:
        @poller.hookimpl
        def order_event(self, event: Any, notifier: Any) -> None:
            raise AssertionError("never called")

    with pytest.raises(pluggy.PluginValidationError, match=r"\{'notifier'\}"):
        manager().register(Wrong())
