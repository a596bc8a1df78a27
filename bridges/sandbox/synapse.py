"""A throwaway Synapse homeserver run as a subprocess, for the demo and the tests.

The server listens on 127.0.0.1 only (client and admin API, no federation), keeps its
SQLite database, media, signing key and logs in one working directory, and has every rate
limit raised so that tests and demos never wait on them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

#: Rate limit settings high enough never to be hit.
_UNLIMITED: dict[str, float] = {"per_second": 100000, "burst_count": 100000}


class SynapseError(RuntimeError):
    """Synapse failed to start, died, or refused a request."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (binds and closes a socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def rate_limits() -> dict[str, Any]:
    """Return the ``rc_*`` settings of Synapse 1.163 with every limit set very high."""
    unlimited = dict(_UNLIMITED)
    return {
        "rc_message": unlimited,
        "rc_registration": unlimited,
        "rc_registration_token_validity": unlimited,
        "rc_login": {
            "address": unlimited,
            "account": unlimited,
            "failed_attempts": unlimited,
        },
        "rc_admin_redaction": unlimited,
        "rc_joins": {"local": unlimited, "remote": unlimited},
        "rc_joins_per_room": unlimited,
        "rc_key_requests": unlimited,
        "rc_3pid_validation": unlimited,
        "rc_invites": {
            "per_room": unlimited,
            "per_user": unlimited,
            "per_issuer": unlimited,
        },
        "rc_third_party_invite": unlimited,
        "rc_media_create": unlimited,
        "rc_presence": {"per_user": unlimited},
        "rc_delayed_event_mgmt": unlimited,
        "rc_room_creation": unlimited,
        "rc_reports": unlimited,
        "rc_user_directory": unlimited,
        "rc_profile": unlimited,
        "rc_federation": {
            "window_size": 1000,
            "sleep_limit": 100000,
            "sleep_delay": 1,
            "reject_limit": 100000,
            "concurrent": 1000,
        },
    }


class Synapse:
    """One Synapse homeserver process bound to a working directory.

    Nothing happens at construction; :meth:`start` writes the configuration and spawns the
    server, :meth:`stop` ends it.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        server_name: str = "caliopen.localhost",
        port: int | None = None,
        appservice_files: Sequence[Path] = (),
        experimental_appservice_e2ee: bool = False,
        log_level: str = "WARNING",
        database: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        # Synapse's ``database`` section; None is SQLite in the workdir.
        self.database = database
        self.server_name = server_name
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.appservice_files = [Path(p).resolve() for p in appservice_files]
        self.experimental_appservice_e2ee = experimental_appservice_e2ee
        self.log_level = log_level.upper()
        self.config_path = self.workdir / "homeserver.yaml"
        self.log_path = self.workdir / "homeserver.log"
        self.console_path = self.workdir / "console.log"
        self.signing_key_path = self.workdir / f"{server_name}.signing.key"
        self.registration_shared_secret = ""
        self.start_seconds: float | None = None
        self._proc: asyncio.subprocess.Process | None = None

    # -- configuration ---------------------------------------------------------------

    def _secrets(self) -> dict[str, str]:
        """Load the workdir's secrets, creating them on first use (file I/O)."""
        path = self.workdir / "secrets.json"
        if path.exists():
            data: dict[str, str] = json.loads(path.read_text())
            return data
        data = {
            "registration_shared_secret": secrets.token_urlsafe(32),
            "macaroon_secret_key": secrets.token_urlsafe(32),
            "form_secret": secrets.token_urlsafe(32),
        }
        path.write_text(json.dumps(data))
        path.chmod(0o600)
        return data

    def _ensure_signing_key(self) -> None:
        """Generate the server's signing key once per workdir (file I/O)."""
        if self.signing_key_path.exists():
            return
        from signedjson.key import generate_signing_key, write_signing_keys

        key = generate_signing_key("a_" + secrets.token_hex(2))
        with self.signing_key_path.open("w") as f:
            write_signing_keys(f, [key])
        self.signing_key_path.chmod(0o600)

    def homeserver_config(self) -> dict[str, Any]:
        """Return the homeserver configuration as a dict (no I/O)."""
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "public_baseurl": self.url + "/",
            "pid_file": str(self.workdir / "homeserver.pid"),
            "report_stats": False,
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": self.database or {
                "name": "sqlite3",
                "args": {"database": str(self.workdir / "homeserver.db")},
            },
            "log_config": str(self.workdir / "log.yaml"),
            "media_store_path": str(self.workdir / "media_store"),
            "max_upload_size": "100M",
            "url_preview_enabled": False,
            "enable_metrics": False,
            "enable_registration": False,
            "registration_shared_secret": self.registration_shared_secret,
            "signing_key_path": str(self.signing_key_path),
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "federation_domain_whitelist": [],
            "bcrypt_rounds": 4,
            "presence": {"enabled": False},
            "app_service_config_files": [str(p) for p in self.appservice_files],
            **rate_limits(),
        }
        if self.experimental_appservice_e2ee:
            config["experimental_features"] = {
                "msc2409_to_device_messages_enabled": True,
                # Synapse 1.163 always allows device masquerading; older ones need this.
                "msc3202_device_masquerading": True,
                "msc3202_transaction_extensions": True,
            }
        return config

    def log_config(self) -> dict[str, Any]:
        """Return the Python logging configuration Synapse will load (no I/O)."""
        return {
            "version": 1,
            "formatters": {
                "precise": {
                    "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                    "%(request)s - %(message)s"
                }
            },
            "filters": {
                "context": {
                    "()": "synapse.logging.context.LoggingContextFilter",
                    "request": "",
                }
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "precise",
                    "filename": str(self.log_path),
                    "filters": ["context"],
                    "encoding": "utf8",
                }
            },
            "root": {"level": self.log_level, "handlers": ["file"]},
            "disable_existing_loggers": False,
        }

    def write_config(self) -> None:
        """Write homeserver.yaml, log.yaml and the signing key into the workdir (file I/O)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "media_store").mkdir(exist_ok=True)
        stored = self._secrets()
        self.registration_shared_secret = stored["registration_shared_secret"]
        self._ensure_signing_key()
        config = self.homeserver_config()
        config["macaroon_secret_key"] = stored["macaroon_secret_key"]
        config["form_secret"] = stored["form_secret"]
        # JSON is valid YAML, so no YAML writer is needed.
        self.config_path.write_text(json.dumps(config, indent=2))
        self.config_path.chmod(0o600)
        (self.workdir / "log.yaml").write_text(json.dumps(self.log_config(), indent=2))

    # -- process ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        """The server's process id, if it was started."""
        return self._proc.pid if self._proc is not None else None

    def _failure_report(self) -> str:
        parts = []
        console = _tail(self.console_path)
        if console:
            parts.append(f"--- {self.console_path} ---\n{console}")
        logtail = _tail(self.log_path)
        if logtail:
            parts.append(f"--- {self.log_path} ---\n{logtail}")
        return "\n".join(parts) or "(no output)"

    async def start(self, timeout: float = 90) -> None:
        """Write the config, spawn Synapse and wait until its client API answers.

        Raises SynapseError (with the tail of the server's output) if the process exits or
        the API does not answer within ``timeout`` seconds; the process is stopped then.
        """
        if self.running:
            raise SynapseError("Synapse is already running")
        began = time.monotonic()
        self.write_config()
        console = self.console_path.open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "synapse.app.homeserver",
                "-c",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=console,
                stderr=asyncio.subprocess.STDOUT,
                cwd=str(self.workdir),
                start_new_session=True,
            )
        finally:
            console.close()
        try:
            await self._wait_ready(began + timeout)
        except BaseException:
            await self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        log.info("Synapse ready at %s in %.2f s (pid %s)", self.url, self.start_seconds, self.pid)

    async def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        probe = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=probe) as session:
            while True:
                if self._proc.returncode is not None:
                    raise SynapseError(
                        f"Synapse exited with code {self._proc.returncode} during start:\n"
                        + self._failure_report()
                    )
                try:
                    async with session.get(self.url + "/_matrix/client/versions") as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise SynapseError(
                        f"Synapse did not answer on {self.url} in time:\n" + self._failure_report()
                    )
                await asyncio.sleep(0.1)

    async def stop(self, timeout: float = 15) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after ``timeout`` seconds.

        Always reaps the process; does nothing if it was never started.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            self._signal(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("Synapse (pid %s) ignored SIGTERM; killing it", proc.pid)
                self._signal(proc.pid, signal.SIGKILL)
                await proc.wait()
        else:
            await proc.wait()
        self._proc = None

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass

    async def __aenter__(self) -> Synapse:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- accounts --------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.request(
                method, self.url + path, json=body, headers=headers
            ) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 400:
                    errcode = data.get("errcode") if isinstance(data, dict) else None
                    error = data.get("error") if isinstance(data, dict) else None
                    raise SynapseError(f"{method} {path}: HTTP {resp.status} {errcode}: {error}")
                result: dict[str, Any] = data
                return result

    def user_id(self, localpart: str) -> str:
        """Return the full Matrix ID of ``localpart`` on this server (no I/O)."""
        return f"@{localpart}:{self.server_name}"

    async def register_user(
        self,
        localpart: str,
        password: str,
        *,
        admin: bool = False,
        displayname: str | None = None,
    ) -> str:
        """Create a user with the shared-secret admin API and return its Matrix ID.

        Raises SynapseError if the server refuses (for example, the user exists).
        """
        nonce = (await self._request("GET", "/_synapse/admin/v1/register"))["nonce"]
        mac = hmac.new(self.registration_shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(nonce.encode())
        mac.update(b"\x00")
        mac.update(localpart.encode())
        mac.update(b"\x00")
        mac.update(password.encode())
        mac.update(b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        body: dict[str, Any] = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        if displayname is not None:
            body["displayname"] = displayname
        result = await self._request("POST", "/_synapse/admin/v1/register", body)
        return str(result["user_id"])

    async def login(
        self, localpart: str, password: str, *, device_id: str | None = None
    ) -> dict[str, Any]:
        """Log in with a password and return the /login response.

        The response holds ``access_token``, ``device_id`` and ``user_id``; each call makes a
        new device unless ``device_id`` is given. Raises SynapseError on refusal.
        """
        body: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
        }
        if device_id is not None:
            body["device_id"] = device_id
        return await self._request("POST", "/_matrix/client/v3/login", body)
