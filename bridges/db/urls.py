"""Database URLs: the mautrix-style URL of the config, translated for SQLAlchemy (alembic).

The config names the database the way :meth:`mautrix.util.async_db.Database.create` takes it:

- ``sqlite:///abs/path.db`` (absolute) or ``sqlite:relative.db`` (relative to the working
  directory); ``sqlite3:`` is accepted as well, as mautrix does;
- ``postgres://user:pass@host:port/db`` or ``postgresql://...``, with asyncpg's query
  parameters (``?sslmode=require``, ``?host=/run/postgresql`` for a unix socket).

SQLAlchemy is only used at migration time, through the async drivers the runtime uses too:
``sqlite+aiosqlite`` and ``postgresql+asyncpg``. Nothing here does I/O.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy.engine import URL as SAURL
from yarl import URL

Backend = Literal["sqlite", "postgres"]

_SQLITE_SCHEMES = frozenset({"sqlite", "sqlite3"})
_POSTGRES_SCHEMES = frozenset({"postgres", "postgresql"})


def backend(url: str) -> Backend:
    """Which backend a mautrix-style database URL names.

    Raises:
        ValueError: the scheme is missing or not supported (the message names it).
    """
    scheme = _scheme(url)
    if scheme in _SQLITE_SCHEMES:
        return "sqlite"
    if scheme in _POSTGRES_SCHEMES:
        return "postgres"
    raise ValueError(
        f"unsupported database URL scheme {scheme!r}: use sqlite:///path.db, sqlite:relative.db "
        "or postgres://user:password@host:port/database"
    )


def _scheme(url: str) -> str:
    if not isinstance(url, str) or ":" not in url:
        raise ValueError(
            "database URL has no scheme: use sqlite:///path.db, sqlite:relative.db "
            "or postgres://user:password@host:port/database"
        )
    return url.split(":", 1)[0].lower()


def _parse(url: str) -> URL:
    try:
        parsed = URL(url)
        parsed.explicit_port  # yarl validates the port lazily
    except ValueError as e:
        raise ValueError(f"invalid database URL: {e}") from None
    return parsed


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:`` URL, exactly as mautrix's aiosqlite backend opens it.

    Raises:
        ValueError: not a sqlite URL, it names a host, or it has no path.
    """
    if backend(url) != "sqlite":
        raise ValueError(f"not a sqlite database URL (scheme {_scheme(url)!r})")
    parsed = _parse(url)
    if parsed.host:
        raise ValueError(
            f"sqlite database URL names a host ({parsed.host!r}): use sqlite:///absolute/path.db "
            "(three slashes) or sqlite:relative/path.db"
        )
    if parsed.query_string:
        raise ValueError("sqlite database URL takes no query parameters")
    path = parsed.path
    if not path or path == "/":
        raise ValueError("sqlite database URL has no file path")
    return path


def to_sqlalchemy(url: str) -> SAURL:
    """The SQLAlchemy URL object (async driver) for a mautrix-style database URL.

    Raises:
        ValueError: unsupported scheme, or a URL that is missing a part it needs (the message
            names the problem and never contains the password).
    """
    if backend(url) == "sqlite":
        return SAURL.create("sqlite+aiosqlite", database=sqlite_path(url))
    parsed = _parse(url)
    database = parsed.path.lstrip("/")
    if not database or "/" in database:
        raise ValueError("postgres database URL must name one database: postgres://user@host:port/NAME")
    if not parsed.host and "host" not in parsed.query:
        raise ValueError("postgres database URL names no host (give one, or ?host=/socket/dir)")
    port = parsed.explicit_port
    query: dict[str, str | tuple[str, ...]] = {}
    for key in parsed.query:
        values = parsed.query.getall(key)
        # SQLAlchemy's asyncpg dialect passes query parameters to asyncpg.connect() as
        # keywords: libpq's "sslmode" is asyncpg's "ssl" there.
        name = "ssl" if key == "sslmode" else key
        query[name] = values[0] if len(values) == 1 else tuple(values)
    return SAURL.create(
        "postgresql+asyncpg",
        username=parsed.user or None,
        password=parsed.password or None,
        host=parsed.host or None,
        port=port,
        database=database,
        query=query,
    )


def to_sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy URL string (``sqlite+aiosqlite:///...``, ``postgresql+asyncpg://...``).

    The password, if any, is kept (escaped) in the result: do not log it.

    Raises:
        ValueError: as :func:`to_sqlalchemy`.
    """
    return to_sqlalchemy(url).render_as_string(hide_password=False)
