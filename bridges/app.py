"""Putting the bridge together: config → database → Matrix side → core → networks → HTTP.

:class:`Caliopen` is what ``caliopen run`` starts. Start order matters for encryption (see
``bridges/matrix/crypto.py``): the schema is current, the networks are constructed (no I/O),
the HTTP server listens, the bot is registered and its device loaded, then logins connect and
the stored inbox is resumed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

from aiohttp import web

# mautrix's loggers must be made by mautrix (Database.create asserts a TraceLogger).
import mautrix.util.logging  # noqa: F401
from mautrix.util.async_db import Database

from .config import Config
from .core.bridge import Bridge
from .core.errors import ConfigError
from .core.metrics import METRICS
from .core.provisioning import Provisioning
from .db import Store
from .db import migrate

log = logging.getLogger("caliopen")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.get("logging.format", "text") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = str(config["logging.level"]).upper()
    root.setLevel(level)
    # Database drivers and mautrix log SQL parameters and request bodies at DEBUG: they would
    # put message bodies in the log. They stay at WARNING whatever the level asked for.
    for noisy in ("mau", "aiohttp.access", "aiosqlite", "asyncpg", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Caliopen:
    def __init__(self, config: Config) -> None:
        self.config = config
        Bridge.import_networks(config)
        self.db = Database.create(config["database.url"], log=logging.getLogger("mau.db"))
        from .matrix.appservice import MatrixSide

        self.matrix = MatrixSide(config, self.db)
        self.bridge = Bridge(config, Store(self.db), self.matrix, self.matrix.app)
        self.matrix.on_event = self.bridge.on_matrix_event
        self.matrix.on_bot_invite = self.bridge.on_bot_invite
        if config["provisioning.enabled"]:
            Provisioning(self.bridge, config["provisioning.shared_secret"], config["provisioning.prefix"]).register(
                self.matrix.app
            )
        if config["metrics.enabled"]:
            self.matrix.app.router.add_get("/metrics", self._metrics)
        self.bridge.load_networks()
        self._started = False

    async def _metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(METRICS.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        url = self.config["database.url"]
        try:
            if self.config["database.auto_migrate"]:
                await migrate.upgrade(url)
            elif not await migrate.is_current(url):
                raise ConfigError("database.auto_migrate",
                                  "the database schema is old and auto_migrate is off: run `caliopen migrate`")
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError("database.url", f"cannot open the database: {type(e).__name__}: {e}") from e
        await self.db.start()
        self._started = True
        await self.matrix.start()
        await self.bridge.start()
        self.matrix.az.ready = True  # /_matrix/mau/ready answers 200 from now on
        log.info("Caliopen is ready (bot %s, networks: %s)", self.matrix.bot_mxid,
                 ", ".join(self.bridge.connectors) or "none")

    async def stop(self) -> None:
        try:
            await self.bridge.stop()
        finally:
            try:
                await self.matrix.stop()
            finally:
                if self._started:
                    await self.db.stop()


async def run(config: Config, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None)."""
    import signal

    app = Caliopen(config)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await app.start()
        if ready:
            ready.set()
        await stop.wait()
        log.info("Stopping")
    finally:
        await app.stop()
