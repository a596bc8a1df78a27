"""Runs Caliopen as a real subprocess (``python -m bridges run``) for end-to-end tests.

Each :class:`BridgeProcess` has its own config, registration, database and ghost prefixes, so
several can share one Synapse. It can be killed with SIGKILL and started again on the same
database, which is how the tests check that nothing is lost or bridged twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from bridges.config import Config, generate_config, write_registration
from bridges.sandbox.synapse import free_port

REPO = Path(__file__).resolve().parents[2]


def make_bridge_config(workdir: Path, *, tag: str, domain: str, homeserver_url: str, db_url: str | None,
                       networks: dict[str, dict[str, Any]]) -> Config:
    """A config (and its registration beside it) for one test bridge.

    ``tag`` makes the bot and every ghost prefix unique, so bridges do not share namespaces.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = generate_config(homeserver_url, domain)
    cfg.set("appservice.port", port)
    cfg.set("appservice.address", f"http://127.0.0.1:{port}")
    cfg.set("appservice.public_url", f"http://127.0.0.1:{port}")
    cfg.set("appservice.id", f"caliopen-{tag}")
    cfg.set("appservice.bot.username", f"caliopen{tag}")
    cfg.set("database.url", db_url or f"sqlite://{(workdir / 'caliopen.db').resolve()}")
    cfg.set("bridge.send_retry_delay", 0.2)
    cfg.set("logging.level", "DEBUG")
    cfg.set("metrics.enabled", True)
    nets = cfg["networks"]
    for name in list(nets):
        nets[name]["enabled"] = False
        nets[name]["ghost_prefix"] = f"{tag}{nets[name]['ghost_prefix']}"
    for name, section in networks.items():
        base = dict(nets.get(name) or {"ghost_prefix": f"{tag}{name}_", "displayname_template": "{name}"})
        base.update(section)
        nets[name] = base
    cfg.path = workdir / "config.yaml"
    cfg.save()
    write_registration(cfg, workdir / "appservice.yaml")
    return cfg


class BridgeProcess:
    def __init__(self, config: Config) -> None:
        assert config.path is not None
        self.config = config
        self.workdir = config.path.parent
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = self.workdir / "bridge.log"
        self.url = config["appservice.address"]
        self.bot_mxid = config.bot_mxid
        self.starts = 0

    def reload_config(self) -> None:
        self.config.save()

    async def start(self, timeout: float = 60) -> None:
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start {self.starts} =====\n".encode())
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridges", "run", "-c", str(self.config.path),
            cwd=str(REPO), stdout=log, stderr=log, env=env,
        )
        log.close()
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"the bridge exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with http.get(f"{self.url}/_matrix/mau/ready") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"the bridge did not become ready:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, timeout: float = 20) -> int | None:
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode if self.proc else None

    async def restart(self, *, kill: bool = True) -> None:
        await (self.kill() if kill else self.stop())
        await self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    async def provision(self, method: str, path: str, user: str, json: Any = None,
                        secret: str | None = None) -> tuple[int, Any]:
        """Call the provisioning API as ``user``; returns (status, JSON body)."""
        secret = secret if secret is not None else self.config["provisioning.shared_secret"]
        url = f"{self.url}{self.config['provisioning.prefix']}/v3{path}"
        async with aiohttp.ClientSession() as http:
            async with http.request(method, url, params={"user_id": user}, json=json,
                                    headers={"Authorization": f"Bearer {secret}"}) as resp:
                return resp.status, await resp.json(content_type=None)

    async def login_fake(self, user: str, username: str, password: str) -> str:
        """Log ``user`` in to the fake network over provisioning; returns the login ID."""
        status, step = await self.provision("POST", "/login/start/fake.password", user)
        assert status == 200, step
        status, done = await self.provision(
            "POST", f"/login/step/{step['login_id']}/{step['step_id']}/user_input", user,
            json={"username": username, "password": password})
        assert status == 200 and done["type"] == "complete", done
        return done["complete"]["user_login_id"]
