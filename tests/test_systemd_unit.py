"""The shipped unit file: required directives, and its hardening score where systemd exists."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "poller.service"

REQUIRED = {
    "Type": "notify", "Restart": "on-failure", "RestartPreventExitStatus": "78",
    "StateDirectory": "poller", "ConfigurationDirectory": "poller",
    "ExecReload": "/bin/kill -HUP $MAINPID", "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
}


def _service() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


def test_required_directives() -> None:
    service = _service()
    for key, value in REQUIRED.items():
        assert service.get(key) == value, key
    assert "WatchdogSec" in service and int(service["WatchdogSec"]) > 0
    assert "LoadCredential=" in UNIT.read_text()
    assert "poller run" in service["ExecStart"]


def test_hardening_score() -> None:
    """Exposure ≤ 2.0 in `systemd-analyze security --offline=yes` (CI has systemd-analyze);
    without it, the directives the score depends on are checked instead."""
    tool = shutil.which("systemd-analyze")
    if tool:
        done = subprocess.run([tool, "security", "--offline=yes", "--threshold=20", str(UNIT)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr
        assert "Overall exposure level" in done.stdout
    else:
        service = _service()
        for key in ("PrivateTmp", "PrivateDevices", "ProtectHome", "ProtectKernelTunables",
                    "ProtectKernelModules", "RestrictNamespaces", "LockPersonality",
                    "MemoryDenyWriteExecute", "DynamicUser"):
            assert service.get(key) == "yes", key
        assert service.get("CapabilityBoundingSet", None) == ""


# --- The documented install, seen from the service's unprivileged user. ---

ROOT = UNIT.parent.parent
NOBODY = 65534


def _readme_install_lines() -> list[str]:
    """The README's "Under systemd" commands that lay out files (``install …``)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Under systemd"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    steps = [step.strip() for line in block.group(1).splitlines() for step in line.split("&&")]
    return [step for step in steps if step.startswith("install ")]


def _as_nobody(*argv: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", "--", *argv], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", **(env or {})})


@pytest.fixture
def scratch_root() -> Iterator[Path]:
    """A folder every user can traverse (pytest's own tmp folders are root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="poller-root-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to act as the service's unprivileged user")
def test_the_documented_install_gives_the_service_user_a_readable_config(
        scratch_root: Path) -> None:
    probe = _as_nobody(sys.executable, "-c", "import poller")
    if probe.returncode != 0:
        pytest.skip(f"this checkout's interpreter is not reachable by uid {NOBODY}: "
                    f"{probe.stderr.strip()[-200:]}")
    (scratch_root / "etc" / "systemd" / "system").mkdir(parents=True)  # systemd's own
    lines = _readme_install_lines()
    assert any("/etc/poller/config.toml" in line for line in lines), lines
    for line in lines:  # the README's steps, word for word, under a scratch root
        step = re.sub(r"(?<=\s)/(etc|opt|var)/", lambda m: f"{scratch_root}/{m.group(1)}/", line)
        done = subprocess.run(step, shell=True, cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, (step, done.stderr)
    etc = scratch_root / "etc" / "poller"
    assert (scratch_root / "etc" / "systemd" / "system" / "poller.service").is_file()
    # A secret as the README says to keep it: root-only, handed over as a credential that
    # systemd copies into a folder only the service user can read.
    creds = scratch_root / "credentials"
    creds.mkdir(mode=0o700)
    os.chown(creds, NOBODY, NOBODY)
    for key in ("api_key", "secret_key"):
        secret = etc / "secrets" / f"tw-main.{key}"
        secret.write_text(f"canary-{key}-0987")
        secret.chmod(0o600)
        shutil.copy(secret, creds / f"brokers.tw-main.{key}")
        os.chown(creds / f"brokers.tw-main.{key}", NOBODY, NOBODY)
    poller = [sys.executable, "-m", "poller", "check-config", "-c", str(etc / "config.toml")]
    done = _as_nobody(*poller, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("configuration OK: 1 broker connection(s)")
    assert done.stderr == "" and "canary" not in done.stdout
    # The secret itself stays out of the service user's reach, but for the credential.
    assert _as_nobody("cat", str(secret)).returncode != 0
    # What the README used to say (0750 root:root) is what broke: the user cannot read it.
    etc.chmod(0o750)
    done = _as_nobody(*poller)
    assert done.returncode == 78
    assert done.stderr.strip().endswith("config.toml: cannot read: Permission denied")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's poller.
    executable = Path(sys.executable).parent / "poller"
    unit = tmp_path / "poller.service"
    unit.write_text(UNIT.read_text().replace("/opt/poller/bin/poller", str(executable)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "poller.service" not in done.stderr, done.stderr  # no warning about our unit


def test_documentation_points_at_the_installed_readme() -> None:
    text = UNIT.read_text()
    assert "Documentation=file:///opt/poller/share/doc/poller/README.md" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"share/doc/poller" = ["README.md"' in pyproject
    assert "ConfigurationDirectoryMode=0755" in text
