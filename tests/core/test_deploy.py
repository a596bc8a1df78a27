"""The deployment files agree with each other and with the code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from bridges.config import Config

REPO = Path(__file__).resolve().parents[2]


def test_compose_registration_matches_the_compose_config() -> None:
    cfg = Config.load(REPO / "deploy" / "caliopen.yaml")
    reg = YAML(typ="safe").load((REPO / "appservice.yaml").read_text())
    assert reg == YAML(typ="safe").load(_dump(cfg.registration()))
    assert cfg["database.url"].startswith("postgres://")
    compose = YAML(typ="safe").load((REPO / "docker-compose.yml").read_text())
    assert {"synapse", "postgres", "caliopen"} <= set(compose["services"])
    assert "./appservice.yaml:/deploy/caliopen-registration.yaml:ro" in compose["services"]["synapse"]["volumes"]


def _dump(data: object) -> str:
    import io

    buf = io.StringIO()
    YAML().dump(data, buf)
    return buf.getvalue()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is installed by `make test`")
def test_compose_file_is_valid() -> None:
    res = subprocess.run(["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0, res.stderr
