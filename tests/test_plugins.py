"""Plugins: built-ins, entry points only when named, drop-in folders, hook docs, isolation."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import poller
from poller import hookspecs
from poller.errors import ConfigError
from poller.plugins import get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent

DROPIN = '''
from poller import Notifier, hookimpl

class PigeonNotifier(Notifier):
    kind = "pigeon"
    async def send(self, event):
        return None

@hookimpl
def register_notifiers(register):
    register(PigeonNotifier)
'''


def test_builtins_register_brokers_and_notifiers() -> None:
    registry = get_plugin_manager().registry()
    assert "shioaji" in registry.brokers
    assert {"console", "webhook"} <= set(registry.notifiers)


@pytest.fixture
def fake_distribution(tmp_path: Path) -> Iterator[Path]:
    """An installed distribution with a `poller` entry point that leaves a marker on import."""
    marker = tmp_path / "imported.marker"
    (tmp_path / "rogue_poller_plugin.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('yes')\n" + DROPIN)
    info = tmp_path / "rogue_poller_plugin-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rogue-poller-plugin\n"
                                   "Version: 1.2\n")
    (info / "entry_points.txt").write_text("[poller]\nrogue = rogue_poller_plugin\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield marker
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("rogue_poller_plugin", None)


def test_entry_points_are_imported_only_when_named(fake_distribution: Path) -> None:
    registry = get_plugin_manager().registry()
    assert not fake_distribution.exists() and "pigeon" not in registry.notifiers
    plugins = get_plugin_manager(entry_point_names=["rogue"])
    assert fake_distribution.exists()
    assert "pigeon" in plugins.registry().notifiers
    info = [i for i in plugins.infos if i.name == "rogue"][0]
    assert info.version == "rogue-poller-plugin 1.2" and info.hooks == ["register_notifiers"]


def test_a_named_entry_point_that_is_not_installed_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no installed plugin of that name"):
        get_plugin_manager(entry_point_names=["not-there"])


def _dropin_dir(tmp_path: Path, code: str = DROPIN, name: str = "pigeon.py") -> Path:
    folder = tmp_path / "dropins"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o755)
    (folder / name).write_text(code)
    (folder / name).chmod(0o644)
    return folder


def test_dropin_directory_loads_plugins(tmp_path: Path) -> None:
    plugins = get_plugin_manager(plugin_dirs=[_dropin_dir(tmp_path)])
    assert "pigeon" in plugins.registry().notifiers
    assert any(i.source.startswith("drop-in") for i in plugins.infos)


@pytest.mark.parametrize("target", ["folder", "file"])
def test_dropins_writable_by_others_are_refused(tmp_path: Path, target: str) -> None:
    folder = _dropin_dir(tmp_path)
    (folder if target == "folder" else folder / "pigeon.py").chmod(
        0o777 if target == "folder" else 0o666)
    with pytest.raises(ConfigError, match="writable by other users"):
        get_plugin_manager(plugin_dirs=[folder])


def test_misspelled_hook_is_caught(tmp_path: Path) -> None:
    code = "from poller import hookimpl\n@hookimpl\ndef regster_notifiers(register):\n    pass\n"
    with pytest.raises(ConfigError, match="unknown hook"):
        get_plugin_manager(plugin_dirs=[_dropin_dir(tmp_path, code, "typo.py")])


def test_a_plugin_that_fails_to_import_names_itself(tmp_path: Path) -> None:
    folder = _dropin_dir(tmp_path, "raise RuntimeError('boom')\n", "broken.py")
    with pytest.raises(ConfigError, match=r"broken.py: failed to import: RuntimeError: boom"):
        get_plugin_manager(plugin_dirs=[folder])


def test_duplicate_kind_is_refused(tmp_path: Path) -> None:
    code = DROPIN.replace('"pigeon"', '"webhook"')
    plugins = get_plugin_manager(plugin_dirs=[_dropin_dir(tmp_path, code)])
    with pytest.raises(ConfigError, match="kind 'webhook' registered twice"):
        plugins.registry()


def test_observer_failures_are_isolated() -> None:
    seen: list[Any] = []

    class Raising:
        @poller.hookimpl
        def order_event(self, event: Any) -> None:
            raise RuntimeError("observer bug")

    class AsyncRaising:
        @poller.hookimpl
        async def order_event(self, event: Any) -> None:
            raise RuntimeError("async observer bug")

    class Recording:
        @poller.hookimpl
        async def order_event(self, event: Any) -> None:
            seen.append(event)

    plugins = get_plugin_manager()
    for plugin in (Recording(), Raising(), AsyncRaising()):
        plugins.pm.register(plugin)
    asyncio.run(plugins.call_observers("order_event", event="E"))
    assert seen == ["E"]


def _readme_hooks() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Plugin hooks")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_every_hook_is_documented_in_the_readme() -> None:
    section = _readme_hooks()
    for name, spec in inspect.getmembers(hookspecs, inspect.isfunction):
        if not hasattr(spec, "poller_spec"):
            continue
        args = ", ".join(inspect.signature(spec).parameters)
        assert f"{name}({args})" in section, f"hook {name}({args}) is not documented"


def test_readme_documents_no_hook_that_does_not_exist() -> None:
    documented = set(re.findall(r"^### `(\w+)\(", _readme_hooks(), flags=re.M))
    real = {n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(f, "poller_spec")}
    assert documented == real


def test_public_names_are_sorted_and_complete() -> None:
    assert poller.__all__ == sorted(poller.__all__)
    assert all(hasattr(poller, name) for name in poller.__all__)


def test_installed_wheel_does_not_claim_a_generic_plugins_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, timeout=300,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    wheel = next(tmp_path.glob("poller-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "plugins" not in tops
    assert {"poller", "poller_plugins"} <= tops


@pytest.mark.parametrize(("kind", "window"), [
    ("telegram", 10.0), ("slack", 10.0), ("email", 10.0), ("apprise", 10.0),
    ("webhook", 0.0), ("console", 0.0)])
def test_fill_coalescing_is_on_for_what_people_read_and_off_for_machines(
        kind: str, window: float) -> None:
    """The built-in notifiers as the registry hands them out: chat and mail gather a burst
    of fills for 10 s, a webhook and the console get every fill as it comes."""
    cls = get_plugin_manager().registry().notifiers[kind]
    assert cls.coalesce_fills_default == window
