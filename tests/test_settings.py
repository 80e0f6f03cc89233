"""Configuration: sources and priority, the example file, and one clear line per problem."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from poller.cli import main
from poller.compose import validate
from poller.errors import ConfigError
from poller.plugins import get_plugin_manager
from poller.settings import config_path, load_settings

ROOT = Path(__file__).resolve().parent.parent
CANARY = "canary-Secret-7f3a9b"

GOOD = """
[daemon]
database = "{db}"

[brokers.tw-main]
kind = "shioaji"
base_url = "https://sj.example.com"
api_key = "key-1234"
secret_key = "{secret}"
accounts = [{{ broker_id = "9A95", account_id = "1234567" }}]

[notifiers.hook]
kind = "webhook"
url = "https://hooks.example.com/x"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_reference_config_is_valid_and_documents_every_key() -> None:
    """config.reference.toml: every key of every built-in broker and notifier (the apprise
    one needs the extra, which the test install has)."""
    path = ROOT / "config.reference.toml"
    settings = load_settings(path)
    plugins = get_plugin_manager()
    validated = validate(settings, plugins.registry(), str(path))
    text = path.read_text()
    for name in type(settings.daemon).model_fields:
        assert f"\n{name} =" in text or f"\n# {name} =" in text, \
            f"daemon.{name} is not documented"
    for _, (_cls, cfg) in validated.brokers.items():
        for name, field in type(cfg).model_fields.items():
            key = field.alias or name
            assert f"\n{key} =" in text, f"broker key {key} is not documented"
    kinds = {cls.kind for cls, _ in validated.brokers.values()}
    assert kinds == {"shioaji", "longport", "webull", "coinw"}
    for _, (_ncls, ncfg) in validated.notifiers.items():
        for name in type(ncfg).model_fields:
            assert f"{name}" in text, f"notifier key {name} is not documented"


def _check_config_without_apprise(path: Path) -> subprocess.CompletedProcess[str]:
    """``poller check-config`` in a process where apprise cannot be imported: a plain
    ``pip install .`` without the extra."""
    code = ("import sys; sys.modules['apprise'] = None; from poller.cli import main; "
            f"sys.exit(main(['check-config', '-c', {str(path)!r}]))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_the_short_example_validates_on_a_plain_install() -> None:
    done = _check_config_without_apprise(ROOT / "config.example.toml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("configuration OK: 1 broker connection(s), 2 notifier(s)")
    assert done.stderr == ""  # no warning either: its file holds no secret
    # The reference needs the extra, and says how to get it from the checkout.
    done = _check_config_without_apprise(ROOT / "config.reference.toml")
    assert done.returncode == 78
    assert "pip install '.[apprise]'" in done.stderr and "Traceback" not in done.stderr


def test_reference_comments_quote_the_figures_check_config_prints() -> None:
    done = subprocess.run([sys.executable, "-m", "poller", "check-config", "-c",
                           str(ROOT / "config.reference.toml")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    text = (ROOT / "config.reference.toml").read_text(encoding="utf-8")
    quoted = re.findall(r"of the (\d+\.\d+)/s poller uses at share (\d\.\d+)", text)
    assert quoted, "the reference quotes no budget figure"
    for rate, share in quoted:
        assert f"share {share}" in done.stdout and f"→ {rate}/s" in done.stdout, (rate, share)


def test_config_path_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLLER_CONFIG", raising=False)
    assert config_path(None) == Path("/etc/poller/config.toml")
    monkeypatch.setenv("POLLER_CONFIG", "/tmp/from-env.toml")
    assert config_path(None) == Path("/tmp/from-env.toml")
    assert config_path("/tmp/cli.toml") == Path("/tmp/cli.toml")


def test_env_overrides_and_secret_files(tmp_path: Path) -> None:
    text = GOOD.format(db=tmp_path / "p.db", secret="from-file-placeholder")
    text = text.replace('secret_key = "from-file-placeholder"\n', "")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "brokers.tw-main.secret_key").write_text("sec-from-credential\n")
    settings = load_settings(write(tmp_path, text), environ={
        "CREDENTIALS_DIRECTORY": str(creds),
        "POLLER_BROKERS__TW_MAIN__API_KEY": "key-from-env",
        "POLLER_DAEMON__LOG_LEVEL": "DEBUG",
    })
    assert settings.daemon.log_level == "DEBUG"
    table = settings.brokers["tw-main"]
    assert table["api_key"] == "key-from-env" and table["secret_key"] == "sec-from-credential"
    validated = validate(settings, get_plugin_manager().registry(), "x")
    assert set(validated.secrets()) >= {"key-from-env", "sec-from-credential"}


BAD_CASES = [
    ("typo'd key", GOOD.replace("accounts =", "acounts ="),
     ["brokers.tw-main.acounts: unknown key", "brokers.tw-main.accounts: required key is missing"]),
    ("missing secret", GOOD.replace('api_key = "key-1234"\n', ""),
     ["brokers.tw-main: api_key is required when the other key is set"]),
    ("wrong type", GOOD.replace('database = "{db}"', 'database = "{db}"\nstale_after = "often"'),
     ["daemon.stale_after: Input should be a valid integer"]),
    ("unknown kind", GOOD.replace('kind = "webhook"', 'kind = "pigeon"'),
     ["notifiers.hook.kind: unknown kind 'pigeon'"]),
    ("unknown daemon key", GOOD.replace("[daemon]", "[daemon]\nverbose = true"),
     ["daemon.verbose: unknown key"]),
    ("bad url", GOOD.replace("https://hooks.example.com/x", "ftp:/nowhere"),
     ["notifiers.hook.url: must be an http:// or https:// URL"]),
    ("limit above documented", GOOD.replace('accounts =', 'limits = {{ orders = "500/10s" }}\n'
                                            'accounts ='),
     ["brokers.tw-main.limits.orders: 500/10s is above the documented limit 250/10s; set "
      "limits_above_documented = true only if the broker granted it"]),
    ("bad TOML", "[daemon\n", ["invalid TOML"]),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_bad_config_prints_one_line_per_problem_and_exits_78(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
        expected: list[str]) -> None:
    path = write(tmp_path, text.format(db=tmp_path / "p.db", secret=CANARY))
    assert main(["check-config", "-c", str(path)]) == 78
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == len(expected), lines
    for line in lines:
        assert line.startswith(f"poller: {path}: "), line
    for wanted in expected:
        assert any(wanted in line for line in lines), (wanted, lines)
    assert CANARY not in out + err
    assert "Traceback" not in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(tmp_path / "nope.toml")]) == 78
    assert capsys.readouterr().err.strip() == f"poller: {tmp_path / 'nope.toml'}: no such file"


def test_validation_errors_never_echo_secret_values(tmp_path: Path) -> None:
    text = GOOD.format(db=tmp_path / "p.db", secret=CANARY).replace(
        'base_url = "https://sj.example.com"', 'base_url = 17')
    with pytest.raises(ConfigError) as caught:
        validate(load_settings(write(tmp_path, text)), get_plugin_manager().registry(), "c")
    assert CANARY not in str(caught.value)
    assert "brokers.tw-main.base_url" in str(caught.value)


def test_console_script_exit_code(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("accounts =", "acounts =").format(
        db=tmp_path / "p.db", secret=CANARY))
    done = subprocess.run([sys.executable, "-m", "poller", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78
    assert CANARY not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_check_config_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD.format(db=tmp_path / "p.db", secret=CANARY))
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "broker tw-main: shioaji at https://sj.example.com" in out
    assert ("limit orders: documented 250/10s; share 0.8 → 200 per 10 s, window padded 0.25 s "
            "(follows the measured round-trip jitter, up to 2 s) → 19.51/s") in out
    assert "notifier hook: webhook" in out and CANARY not in out


def test_list_calls_that_alone_exceed_a_budget_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    accounts = ", ".join(f'{{ broker_id = "9A95", account_id = "{n}" }}' for n in range(30))
    text = GOOD.format(db=tmp_path / "p.db", secret=CANARY).replace(
        'accounts = [{ broker_id = "9A95", account_id = "1234567" }]',
        f"interval = 1.0\naccounts = [{accounts}]")
    assert main(["check-config", "-c", str(write(tmp_path, text))]) == 78
    err = capsys.readouterr().err
    assert "brokers.tw-main.interval: list calls every 1 s need 30.00 requests/s of limit " \
           "group orders, but it allows 19.51/s" in err


def test_raising_a_limit_needs_an_explicit_override_and_warns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = GOOD.format(db=tmp_path / "p.db", secret=CANARY).replace(
        'accounts =', 'limits = { orders = "500/10s" }\nlimits_above_documented = true\naccounts =')
    settings = load_settings(write(tmp_path, text))
    validated = validate(settings, get_plugin_manager().registry(), "c")
    assert validated.brokers["tw-main"][1].limits == {"orders": "500/10s"}
    assert "limit orders = 500/10s is ABOVE the documented 250/10s" in caplog.text


def test_daemon_secrets_come_from_credential_files(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "daemon.heartbeat_url").write_text("https://hc.example/ping/7c1d-secret-uuid\n")
    (creds / "daemon.api_token").write_text("tok-0123456789abcdef\n")
    path = write(tmp_path, GOOD.format(db=tmp_path / "p.db", secret="placeholder-1"))
    settings = load_settings(path, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert settings.daemon.heartbeat_url is not None
    assert settings.daemon.heartbeat_url.get_secret_value().endswith("7c1d-secret-uuid")
    assert settings.daemon.api_token is not None
    assert "credential file" in settings.origins["daemon.heartbeat_url"]
    validated = validate(settings, get_plugin_manager().registry(), "x")
    assert "https://hc.example/ping/7c1d-secret-uuid" in validated.secrets()
