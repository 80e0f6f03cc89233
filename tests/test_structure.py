"""The shape of the code: no import cycles (type-only ones included), plugins and adapters use
only the public API, modules stay small or say why, and tests mirror the package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "poller"
#: Past this many lines a module must say in its docstring why it is one module.
MAX_LINES = 400
SIZE_REASON = "Over 400 lines:"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every ``poller`` module ``path`` imports, anywhere in the file (``TYPE_CHECKING``
    blocks and function bodies included)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "poller")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "poller":
            folder = PACKAGE.joinpath(*node.module.split(".")[1:])
            for alias in node.names:
                if (folder / f"{alias.name}.py").exists():  # `from poller import budgetplan`
                    found.add(f"{node.module}.{alias.name}")
                else:
                    found.add(node.module)
    return found


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_there_is_no_import_cycle() -> None:
    graph = {module_name(p): imports(p) - {module_name(p)} for p in sources()}
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, set()):
            if other not in graph:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


def test_plugins_and_adapters_import_only_the_public_api() -> None:
    """Built-in plugins and broker adapters import from ``poller`` as a third party would."""
    offenders = []
    for path in [*sorted((ROOT / "plugins").glob("*.py")),
                 *sorted((PACKAGE / "brokers").glob("*.py"))]:
        for name in imports(path):
            if name != "poller":
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_core_modules_do_not_import_the_package_root() -> None:
    """The package root re-exports the core; a core module importing it would be a cycle."""
    offenders = [str(p.relative_to(ROOT)) for p in sources()
                 if "poller" in imports(p) and p.parent.name != "brokers"]
    assert offenders == []


def test_modules_stay_small_or_say_why() -> None:
    too_long = []
    for path in [*sources(), *sorted((ROOT / "plugins").glob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and SIZE_REASON not in docstring:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert too_long == []


def test_tests_mirror_the_package() -> None:
    """Every core module, adapter and built-in notifier has a test file of its own.

    The simulators are test infrastructure: every test that runs the daemon exercises
    them, and the conformance tests check them against the brokers' official clients.
    """
    missing = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem.startswith("__"):
            continue
        if not (ROOT / "tests" / f"test_{path.stem}.py").exists():
            missing.append(str(path.relative_to(ROOT)))
    for path in sorted((PACKAGE / "brokers").glob("*.py")):
        if path.stem != "__init__" and not (ROOT / "tests" / "brokers" /
                                            f"test_{path.stem}.py").exists():
            missing.append(str(path.relative_to(ROOT)))
    for path in sorted((ROOT / "plugins").glob("*.py")):
        name = path.stem.removesuffix("_notifier")
        if path.stem != "__init__" and not (ROOT / "tests" / "notifiers" /
                                            f"test_{name}.py").exists():
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []
