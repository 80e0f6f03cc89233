"""`poller demo`, as the README's first command runs it: all four brokers within 30 s."""

from __future__ import annotations

import signal
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


def test_the_demo_shows_pushed_events_when_the_push_extra_is_installed() -> None:
    """With the push extra (a test dependency) the Webull and Shioaji simulators push: the
    banner says so and events the stream reported first are marked. Read until one is."""
    proc = subprocess.Popen([sys.executable, "-m", "poller", "demo", "--brokers",
                             "webull,shioaji", "--seed", "3", "--duration", "90"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:  # the demo ends by itself at 90 s at the latest
            lines.append(line.rstrip("\n"))
            if "(pushed)" in line:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "(pushes)" in lines[0], lines[0]
    assert any("(pushed)" in line for line in lines[1:]), lines
    assert "Traceback" not in err


BLOCK_PUSH = ("import runpy, sys\n"
              "for name in ('grpc', 'httpx_sse', 'websockets'):\n"
              "    sys.modules[name] = None  # as if the push extra were not installed\n"
              "sys.argv = ['poller', 'demo', '--brokers', 'webull,shioaji', '--seed', '3',\n"
              "            '--duration', '15']\n"
              "runpy.run_module('poller', run_name='__main__')\n")


def test_without_the_push_extra_the_demo_polls() -> None:
    done = subprocess.run([sys.executable, "-c", BLOCK_PUSH], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "(pushes)" not in lines[0], lines[0]
    assert not any("(pushed)" in line for line in lines)
    assert lines[-1].endswith("event(s) delivered") and " 0 event(s)" not in lines[-1]
    assert "Traceback" not in done.stderr
