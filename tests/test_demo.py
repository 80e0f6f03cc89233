"""`poller demo`, as the README's first command runs it: all four brokers within 30 s."""

from __future__ import annotations

import subprocess
import sys


def test_demo_shows_events_from_all_four_brokers() -> None:
    done = subprocess.run([sys.executable, "-m", "poller", "demo", "--duration", "25",
                           "--seed", "4"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("poller demo: simulators shioaji at http://127.0.0.1:")
    brokers = {line.split()[1] for line in lines[1:-1]}
    assert brokers == {"shioaji-demo", "longport-demo", "webull-demo", "coinw-demo"}
    assert lines[-1].startswith("poller demo: ") and lines[-1].endswith("event(s) delivered")
    assert "Traceback" not in done.stderr


def test_demo_rejects_bad_arguments() -> None:
    done = subprocess.run([sys.executable, "-m", "poller", "demo", "--brokers", "nasdaq"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("poller: demo: --brokers: unknown kind(s) nasdaq "
                                   "(known: shioaji, longport, webull, coinw)")
