"""A config dict written back as TOML, for configs built in code around the simulators (the
benchmarks' and the tests' ``poller run`` processes read a real file, as users' do).

The standard library reads TOML but does not write it; this covers what those configs hold:
a ``[daemon]`` table and ``[brokers.NAME]`` / ``[notifiers.NAME]`` tables of strings,
numbers, booleans, lists and inline tables.
"""

from __future__ import annotations

import json
from typing import Any


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(i) for i in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_value(i)}" for k, i in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def to_toml(config: dict[str, Any]) -> str:
    """``config`` as a TOML document (``daemon``, then ``brokers`` and ``notifiers``)."""
    lines = ["[daemon]"] + [f"{k} = {_value(v)}" for k, v in config.get("daemon", {}).items()]
    for section in ("brokers", "notifiers"):
        for name, table in config.get(section, {}).items():
            lines.append(f"\n[{section}.{name}]")
            lines += [f"{k} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"
