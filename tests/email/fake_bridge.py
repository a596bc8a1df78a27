"""A small stand-in for the core, as a connector sees it (``BridgeAPI``), for connector tests.

It records what the connector queues and saves, deduplicates like the core (by login, kind and
remote ID), and can be told to fail on chosen remote IDs to test what a crash leaves behind.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

from bridges.core.events import RemoteEvent, RemoteEventKind
from bridges.core.network import LoginState, UserLoginInfo


class QueueFailure(RuntimeError):
    """Raised by :meth:`RecordingBridge.queue_remote_event` for a remote ID told to fail."""


class RecordingBridge:
    def __init__(self) -> None:
        self.events: list[RemoteEvent] = []
        self.attempts: list[str] = []  # every remote ID offered, duplicates included
        self.keys: set[tuple[str, str, str]] = set()
        self.metadata: dict[str, dict[str, Any]] = {}
        self.metadata_history: list[dict[str, Any]] = []
        self.save_points: list[int] = []  # len(attempts) at each metadata save
        self.states: list[tuple[LoginState, str | None]] = []
        self.fail_on: dict[str, int] = {}  # remote_id -> how many more times to fail
        self.bridged: set[str] = set()  # extra remote IDs is_bridged answers True for

    # --- BridgeAPI ---------------------------------------------------------------------

    async def queue_remote_event(self, event: RemoteEvent) -> bool:
        self.attempts.append(event.remote_id)
        if self.fail_on.get(event.remote_id, 0) > 0:
            self.fail_on[event.remote_id] -= 1
            raise QueueFailure(event.remote_id)
        key = (event.login_id, event.kind.value, event.remote_id)
        if key in self.keys:
            return False
        RemoteEvent.from_json(event.to_json())  # it must survive the durable inbox
        self.keys.add(key)
        self.events.append(event)
        return True

    async def save_login_metadata(self, login_id: str, metadata: dict[str, Any]) -> None:
        self.metadata[login_id] = copy.deepcopy(metadata)
        self.metadata_history.append(copy.deepcopy(metadata))
        self.save_points.append(len(self.attempts))

    async def set_login_state(self, login_id: str, state: LoginState, error: str | None = None) -> None:
        self.states.append((state, error))

    async def is_bridged(self, login_id: str, remote_id: str) -> bool:
        return remote_id in self.bridged or (login_id, RemoteEventKind.MESSAGE.value, remote_id) in self.keys

    def register_webhook(self, network: str, handler: Any) -> str:
        return f"/_caliopen/{network}"

    @property
    def public_url(self) -> str:
        return "http://127.0.0.1:9"

    # --- for tests ---------------------------------------------------------------------

    def messages(self) -> list[RemoteEvent]:
        return [e for e in self.events if e.kind == RemoteEventKind.MESSAGE]

    @property
    def state(self) -> LoginState | None:
        return self.states[-1][0] if self.states else None

    async def wait_messages(self, count: int, timeout: float = 30.0) -> list[RemoteEvent]:
        deadline = time.monotonic() + timeout
        while len(self.messages()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.messages())} of {count} messages queued; states: {self.states[-5:]}")
            await asyncio.sleep(0.05)
        return self.messages()

    async def wait_state(self, state: LoginState, timeout: float = 30.0) -> str | None:
        deadline = time.monotonic() + timeout
        while self.state != state:
            if time.monotonic() > deadline:
                raise TimeoutError(f"state {self.state}, not {state}; history: {self.states[-5:]}")
            await asyncio.sleep(0.05)
        return self.states[-1][1]


def login_info(login_id: str, metadata: dict[str, Any], password: str, user: str = "@alice:test") -> UserLoginInfo:
    return UserLoginInfo(id=login_id, user_mxid=user, remote_id=metadata["email"], remote_name=metadata["email"],
                         metadata=copy.deepcopy(metadata), secrets={"password": password})
