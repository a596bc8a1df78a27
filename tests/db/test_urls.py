"""Database URLs of the config (mautrix-style) translated for SQLAlchemy."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from bridges.db.urls import backend, sqlite_path, to_sqlalchemy_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///var/lib/caliopen/bridge.db", "sqlite+aiosqlite:////var/lib/caliopen/bridge.db"),
        ("sqlite:bridge.db", "sqlite+aiosqlite:///bridge.db"),
        ("sqlite:data/bridge.db", "sqlite+aiosqlite:///data/bridge.db"),
        ("sqlite3:bridge.db", "sqlite+aiosqlite:///bridge.db"),
        ("postgres://caliopen@127.0.0.1:5432/caliopen", "postgresql+asyncpg://caliopen@127.0.0.1:5432/caliopen"),
        ("postgresql://caliopen@db/caliopen", "postgresql+asyncpg://caliopen@db/caliopen"),
        ("postgres://db.example.org/caliopen", "postgresql+asyncpg://db.example.org/caliopen"),
    ],
)
def test_translation(url: str, expected: str) -> None:
    assert to_sqlalchemy_url(url) == expected


def test_sqlite_path_matches_what_mautrix_opens() -> None:
    assert sqlite_path("sqlite:///abs/path.db") == "/abs/path.db"
    assert sqlite_path("sqlite:relative.db") == "relative.db"
    assert make_url(to_sqlalchemy_url("sqlite:///abs/path.db")).database == "/abs/path.db"
    assert make_url(to_sqlalchemy_url("sqlite:relative.db")).database == "relative.db"


def test_postgres_password_and_parameters_survive() -> None:
    url = make_url(to_sqlalchemy_url("postgres://bridge:p%40ss%2Fw%3Ard@db.local:6543/cal?sslmode=require"))
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "bridge", "p@ss/w:rd", "db.local", 6543, "cal"
    )
    # asyncpg.connect() takes libpq's sslmode as "ssl".
    assert dict(url.query) == {"ssl": "require"}


def test_postgres_unix_socket() -> None:
    url = make_url(to_sqlalchemy_url("postgres://bridge@/cal?host=/run/postgresql"))
    assert url.host is None and url.query["host"] == "/run/postgresql" and url.database == "cal"


def test_backend() -> None:
    assert backend("sqlite:x.db") == "sqlite"
    assert backend("postgresql://h/db") == "postgres"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://user@host/db", "unsupported database URL scheme 'mysql'"),
        ("cockroach://user@host/db", "unsupported database URL scheme 'cockroach'"),
        ("bridge.db", "no scheme"),
        ("sqlite://host/bridge.db", "names a host"),
        ("sqlite:", "no file path"),
        ("postgres://user@host/", "must name one database"),
        ("postgres://user@host/a/b", "must name one database"),
        ("postgres:///db", "names no host"),
        ("postgres://user:secretpw@host:99999/db", "invalid database URL"),
    ],
)
def test_errors_name_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as excinfo:
        to_sqlalchemy_url(url)
    assert "secretpw" not in str(excinfo.value)
