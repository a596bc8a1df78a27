"""A throwaway PostgreSQL server for tests.

:class:`PostgresServer` runs the real ``initdb`` and ``postgres`` binaries in a work directory,
listening on 127.0.0.1 (a free port) and on a unix socket in that directory, with durability
switched off for speed (``fsync``, ``synchronous_commit``, ``full_page_writes``). Loopback
connections are trusted, so the URLs it hands out carry no password.

PostgreSQL refuses to run as root. When the tests run as root, the server runs as an
unprivileged account (``postgres`` from Debian's package, else ``nobody``): the work directory is
given to that account, and any ancestor directory it cannot traverse gets the search bit for
others (only ``o+x``: nothing becomes listable or readable).
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import stat
from pathlib import Path

import asyncpg

_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SUPERUSER = "postgres"
# Unix socket paths are limited to 107 bytes; PostgreSQL adds "/.s.PGSQL.NNNNN".
_MAX_SOCKET_DIR = 107 - len("/.s.PGSQL.65535")


class PostgresError(RuntimeError):
    """The server could not be started, or a database could not be made."""


def find_binary(name: str) -> str:
    """Path of a PostgreSQL server binary: PATH first, then ``/usr/lib/postgresql/*/bin``.

    Raises:
        PostgresError: when it is nowhere (install the ``postgresql`` Debian package).
    """
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p)],
    )
    if candidates:
        return candidates[-1]
    raise PostgresError(
        f"PostgreSQL binary {name!r} not found on PATH or in /usr/lib/postgresql/*/bin; "
        "install the 'postgresql' package (scripts/apt-packages.txt)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as_account() -> pwd.struct_passwd | None:
    """The account to run the server as: None when not root, else postgres or nobody."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresError("running as root and neither a 'postgres' nor a 'nobody' account exists")


def _make_traversable(path: Path) -> None:
    """Add the search bit for others to every ancestor of ``path`` that lacks it."""
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


class PostgresServer:
    """One PostgreSQL server in ``workdir`` (data in ``workdir/data``, log in ``workdir/postgres.log``).

    Use :meth:`start`, then :meth:`create_database` for each test database, then :meth:`stop`.
    """

    def __init__(self, workdir: Path, *, durable: bool = False) -> None:
        """``durable``: keep PostgreSQL's own fsync and synchronous commit (benchmarks); tests
        turn them off, since their data is thrown away."""
        self.workdir = Path(workdir).resolve()
        self.durable = durable
        self.datadir = self.workdir / "data"
        self.logfile = self.workdir / "postgres.log"
        self.host = "127.0.0.1"
        self.port = 0
        self.user = _SUPERUSER
        self._proc: asyncio.subprocess.Process | None = None
        self._account = _run_as_account()

    @property
    def socket_dir(self) -> Path:
        return self.workdir

    def _subprocess_kwargs(self) -> dict[str, object]:
        kwargs: dict[str, object] = {"cwd": str(self.workdir)}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        if self._account is not None:
            kwargs.update(
                user=self._account.pw_uid, group=self._account.pw_gid, extra_groups=[]
            )
            env["HOME"] = str(self.workdir)
            env["USER"] = env["LOGNAME"] = self._account.pw_name
        kwargs["env"] = env
        return kwargs

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if len(str(self.workdir)) > _MAX_SOCKET_DIR:
            raise PostgresError(f"work directory path too long for a unix socket: {self.workdir}")
        if self._account is not None:
            _make_traversable(self.workdir)
            _chown_tree(self.workdir, self._account.pw_uid, self._account.pw_gid)
        os.chmod(self.workdir, 0o700)

    async def _initdb(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            find_binary("initdb"),
            "--pgdata", str(self.datadir),
            "--username", self.user,
            "--auth", "trust",
            "--encoding", "UTF8",
            "--no-locale",
            "--no-sync",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            **self._subprocess_kwargs(),  # type: ignore[arg-type]
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
        if proc.returncode != 0:
            raise PostgresError(f"initdb failed ({proc.returncode}):\n{out.decode(errors='replace')}")

    async def start(self, *, timeout: float = 60.0) -> None:
        """Initialise the cluster (first time only) and start the server; wait until it answers.

        Raises:
            PostgresError: initdb failed, or the server exited or did not answer in ``timeout``.
        """
        if self._proc is not None:
            raise PostgresError("server already started")
        self._prepare_workdir()
        if not (self.datadir / "PG_VERSION").exists():
            await self._initdb()
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            if await self._launch(timeout):
                return
            last_error = self.log_tail()
        raise PostgresError(f"postgres did not start:\n{last_error}")

    async def _launch(self, timeout: float) -> bool:
        log = open(self.logfile, "ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                find_binary("postgres"),
                "-D", str(self.datadir),
                "-h", self.host,
                "-p", str(self.port),
                "-k", str(self.socket_dir),
                *(() if self.durable else ("-c", "fsync=off", "-c", "synchronous_commit=off",
                                           "-c", "full_page_writes=off")),
                "-c", "max_connections=200",
                "-c", "log_min_messages=warning",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                **self._subprocess_kwargs(),  # type: ignore[arg-type]
            )
        finally:
            log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                self._proc = None
                return False
            try:
                conn = await asyncpg.connect(
                    host=self.host, port=self.port, user=self.user, database="postgres", timeout=5
                )
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)
                continue
            await conn.close()
            return True
        await self.stop()
        raise PostgresError(f"postgres did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server log (for error messages)."""
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def url(self, database: str) -> str:
        """The mautrix-style URL of ``database`` on this server (no password: trust auth)."""
        return f"postgres://{self.user}@{self.host}:{self.port}/{database}"

    async def create_database(self, name: str) -> str:
        """Create an empty database and return its ``postgres://`` URL.

        Raises:
            ValueError: ``name`` is not a plain identifier.
            asyncpg.DuplicateDatabaseError: it exists already.
        """
        if not _DB_NAME.match(name):
            raise ValueError(f"not a plain database name: {name!r}")
        if self._proc is None:
            raise PostgresError("server not started")
        conn = await asyncpg.connect(
            host=self.host, port=self.port, user=self.user, database="postgres", timeout=30
        )
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    async def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its clients first."""
        if not _DB_NAME.match(name):
            raise ValueError(f"not a plain database name: {name!r}")
        conn = await asyncpg.connect(
            host=self.host, port=self.port, user=self.user, database="postgres", timeout=30
        )
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def stop(self, *, timeout: float = 30.0) -> None:
        """Stop the server (fast shutdown, then SIGKILL after ``timeout``). Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
