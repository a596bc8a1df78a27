"""Pytest fixtures for the sandbox homeserver and decrypting test users.

Load with ``pytest_plugins = ["tests.rig.fixtures"]`` in the root conftest, or import the
fixtures by name into a test module.

- ``synapse_factory``: session-scoped; ``await synapse_factory(appservice_files=[...],
  experimental_appservice_e2ee=True)`` starts another Synapse in its own temporary directory.
  All of them are stopped at the end of the session.
- ``synapse``: one session-wide Synapse. It loads the registrations returned by a
  session-scoped fixture named ``appservice_files`` if one is visible; since it is started
  once per session, a suite that needs its own appservices should rather define its own
  fixture with ``synapse_factory``.
- ``nio_users``: ``await nio_users("alice")`` registers a fresh user (the localpart gets a
  unique suffix) on ``synapse`` with its own device and store; closed after the test.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bridges.sandbox.synapse import Synapse
from tests.rig.nio_client import NioUser

SynapseFactory = Callable[..., Awaitable[Synapse]]
NioUserFactory = Callable[..., Awaitable[NioUser]]

_counter = itertools.count(1)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def synapse_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[SynapseFactory]:
    """Start Synapse servers on demand; stop them all when the session ends."""
    started: list[Synapse] = []

    async def start(
        *,
        appservice_files: Sequence[Path] = (),
        experimental_appservice_e2ee: bool = False,
        log_level: str = "WARNING",
        **kwargs: Any,
    ) -> Synapse:
        workdir = tmp_path_factory.mktemp("synapse")
        server = Synapse(
            workdir,
            appservice_files=appservice_files,
            experimental_appservice_e2ee=experimental_appservice_e2ee,
            log_level=log_level,
            **kwargs,
        )
        await server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(started):
            await server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def synapse(request: pytest.FixtureRequest, synapse_factory: SynapseFactory) -> Synapse:
    """A Synapse shared by the whole session (with ``appservice_files`` if that fixture exists)."""
    try:
        files: Sequence[Path] = request.getfixturevalue("appservice_files")
    except pytest.FixtureLookupError:
        files = ()
    return await synapse_factory(appservice_files=files)


async def make_nio_user(
    synapse: Synapse, name: str, store_root: Path, **kwargs: Any
) -> NioUser:
    """Register ``name`` plus a unique suffix on ``synapse`` and return its running NioUser."""
    localpart = f"{name}-{next(_counter)}"
    return await NioUser.create(synapse, localpart, store_root / localpart, **kwargs)


@pytest_asyncio.fixture(loop_scope="session")
async def nio_users(
    synapse: Synapse, tmp_path: Path
) -> AsyncIterator[NioUserFactory]:
    """Make decrypting users on the session's Synapse; close them after the test."""
    users: list[NioUser] = []

    async def make(name: str, *, on: Synapse | None = None, **kwargs: Any) -> NioUser:
        user = await make_nio_user(on or synapse, name, tmp_path / "nio", **kwargs)
        users.append(user)
        return user

    try:
        yield make
    finally:
        for user in users:
            await user.close()
