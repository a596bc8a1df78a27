"""Config generation and validation: every error names its key; placeholders are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from bridges.config import Config, generate_config
from bridges.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridges", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)


def test_init_writes_config_and_registration(tmp_path: Path) -> None:
    res = run_cli("init", "-c", "config.yaml", "--homeserver-url", "http://127.0.0.1:8008",
                  "--domain", "example.net", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    cfg = Config.load(tmp_path / "config.yaml")
    reg = YAML(typ="safe").load((tmp_path / "appservice.yaml").read_text())
    assert reg["as_token"] == cfg["appservice.as_token"] and len(reg["as_token"]) > 30
    assert reg["sender_localpart"] != cfg["appservice.bot.username"]
    regexes = [u["regex"] for u in reg["namespaces"]["users"]]
    assert any("email_" in r for r in regexes) and any("sms_" in r for r in regexes)
    assert all(u["exclusive"] for u in reg["namespaces"]["users"])
    assert cfg.permission("@bob:example.net") == "user"
    assert cfg.permission("@eve:elsewhere.org") == "relay"
    # Refuses to overwrite, and a second init makes different secrets.
    assert run_cli("init", "-c", "config.yaml", cwd=tmp_path).returncode == 1
    other = generate_config()
    assert other["appservice.hs_token"] != cfg["appservice.hs_token"]
    assert (tmp_path / "config.yaml").stat().st_mode & 0o077 == 0


def test_double_puppet_registration_by_cli(tmp_path: Path) -> None:
    assert run_cli("init", "-c", "config.yaml", "--domain", "example.net", cwd=tmp_path).returncode == 0
    assert not Config.load(tmp_path / "config.yaml").get("homeserver.double_puppet_as_token", "")
    res = run_cli("registration", "-c", "config.yaml", "--double-puppet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    cfg = Config.load(tmp_path / "config.yaml")
    token = cfg["homeserver.double_puppet_as_token"]
    assert token and token != cfg["appservice.as_token"]
    reg = YAML(typ="safe").load((tmp_path / "doublepuppet.yaml").read_text())
    assert reg["as_token"] == token and reg["url"] is None
    assert reg["namespaces"]["users"] == [{"exclusive": False, "regex": r"^@.*:example\.net$"}]
    assert (tmp_path / "doublepuppet.yaml").stat().st_mode & 0o077 == 0
    # Run again, it keeps the token (the homeserver already has it).
    assert run_cli("registration", "-c", "config.yaml", "--double-puppet", cwd=tmp_path).returncode == 0
    assert Config.load(tmp_path / "config.yaml")["homeserver.double_puppet_as_token"] == token


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("appservice.as_token", "generate", "appservice.as_token"),
        ("bridge.secret_key", "short", "bridge.secret_key"),
        ("homeserver.address", "not a url", "homeserver.address"),
        ("appservice.port", "8080", "appservice.port"),
        ("database.url", "mysql://x", "database.url"),
        ("bridge.permissions", {"*": "god"}, "bridge.permissions.*"),
        ("networks.twitter.enabled", True, "networks.twitter.enabled"),
        ("networks.sms.ghost_prefix", "email_x", "networks.sms.ghost_prefix"),
        ("provisioning.shared_secret", "changeme", "provisioning.shared_secret"),
    ],
)
def test_bad_values_name_their_key(key: str, value: object, needle: str) -> None:
    cfg = generate_config()
    cfg.validate()
    cfg.set(key, value)
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    assert needle in str(err.value)


def test_missing_key_is_named(tmp_path: Path) -> None:
    cfg = generate_config()
    del cfg.data["homeserver"]["domain"]
    cfg.save(tmp_path / "c.yaml")
    res = run_cli("run", "-c", str(tmp_path / "c.yaml"), cwd=tmp_path)
    assert res.returncode == 2
    assert "homeserver.domain" in res.stderr and "missing" in res.stderr


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    cfg = generate_config()
    cfg.set("database.url", "postgres://nobody@127.0.0.1:1/nothing")
    for section in cfg["networks"].values():
        section["enabled"] = False
    cfg.save(tmp_path / "c.yaml")
    res = run_cli("run", "-c", str(tmp_path / "c.yaml"), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "database.url" in res.stderr and "cannot open the database" in res.stderr


def test_example_config_sections_are_accepted_by_their_networks() -> None:
    """Every key the example config gives a network is one that network knows."""
    from bridges.email.config import EmailConfig
    from bridges.sms.config import SmsConfig

    cfg = generate_config()
    assert EmailConfig.from_section(dict(cfg["networks.email"])).initial_sync_messages == 100
    assert SmsConfig.from_section(dict(cfg["networks.sms"])) is not None
