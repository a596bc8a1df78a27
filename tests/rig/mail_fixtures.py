"""Pytest fixtures for the real mail servers (:mod:`tests.rig.mailservers`).

Import them by name into a test package's conftest (``from tests.rig.mail_fixtures import
mailservers``), or list this module in the root conftest's ``pytest_plugins``.

- ``mailservers``: session-scoped; Dovecot, Postfix and the sink for the whole session
  (about a third of a second to start). Tests keep out of each other's way by adding their own
  users with ``mailservers.add_user(...)``.
- ``mailservers_factory``: session-scoped; ``mailservers_factory(advertise_idle=False)``
  starts another set with other settings, stopped at the end of the session.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.rig.mailservers import MailServers

MailServersFactory = Callable[..., MailServers]

_users = itertools.count(1)


@pytest.fixture(scope="session")
def mailservers_factory() -> Iterator[MailServersFactory]:
    """Start mail server sets on demand; stop them all when the session ends."""
    started: list[MailServers] = []

    def start(**kwargs: Any) -> MailServers:
        servers = MailServers(**kwargs)
        servers.start()
        started.append(servers)
        return servers

    try:
        yield start
    finally:
        for servers in reversed(started):
            servers.stop()


@pytest.fixture(scope="session")
def mailservers(mailservers_factory: MailServersFactory) -> MailServers:
    """Dovecot + Postfix + sink shared by the whole session."""
    return mailservers_factory()


@pytest.fixture
def mail_user(mailservers: MailServers) -> tuple[str, str]:
    """A fresh mailbox on ``mailservers``: (address, password)."""
    address = mailservers.add_user(f"user{next(_users)}")
    return address, mailservers.password(address)
