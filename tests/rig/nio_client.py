"""A Matrix user that decrypts, for tests: matrix-nio (vodozemac) on a sandbox Synapse.

Each :class:`NioUser` logs in with a fresh device, keeps its Olm store on disk, and runs a
background sync loop that joins every invite, keeps every timeline event it receives (decrypted
where it can), retries undecryptable events when keys arrive and asks other devices for keys
that do not come.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import nio
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment

from bridges.sandbox.synapse import Synapse

log = logging.getLogger(__name__)

#: Long-poll timeout of each /sync, in milliseconds: short, so the loop notices keys quickly.
SYNC_TIMEOUT_MS = 500
#: Seconds an event may stay undecryptable before its key is requested from other devices.
KEY_REQUEST_AFTER = 3.0
#: Timeline events fetched per sync and per back-fill request.
TIMELINE_LIMIT = 200

Predicate = Callable[[dict[str, Any]], bool]


class NioUserError(RuntimeError):
    """A request made by the test user failed."""


@dataclass
class Invite:
    """An invite the user received: room, inviter, stripped state (as event dicts)."""

    room_id: str
    inviter: str | None
    is_direct: bool
    state: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the invite as the dict handed to wait_for_invite predicates."""
        return {
            "room_id": self.room_id,
            "inviter": self.inviter,
            "is_direct": self.is_direct,
            "state": self.state,
        }


class NioUser:
    """A registered Matrix user with one encrypting device and a running sync loop.

    Make one with :meth:`create`; always :meth:`close` it.
    """

    def __init__(self, synapse: Synapse, client: nio.AsyncClient) -> None:
        self.synapse = synapse
        self.client = client
        self.user_id: str = client.user_id
        self.device_id: str = client.device_id
        self._timeline: dict[str, list[nio.Event]] = {}
        self._event_index: dict[str, tuple[str, int]] = {}
        self._undecrypted: dict[str, tuple[str, nio.MegolmEvent, float]] = {}
        self._key_requested: set[str] = set()
        self._invites: list[Invite] = []
        self._invites_taken: set[str] = set()
        self._join_failures: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._sync_error: BaseException | None = None
        self._sync_count = 0
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- life cycle ------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        synapse: Synapse,
        localpart: str,
        store_dir: Path,
        password: str = "correct horse battery staple",
        *,
        register: bool = True,
        displayname: str | None = None,
    ) -> NioUser:
        """Register ``localpart`` (unless ``register`` is false), log in a new device, load its
        encrypted store under ``store_dir``, upload its keys and start syncing.

        Raises NioUserError if login or key upload fails, SynapseError if registration fails.
        """
        if register:
            await synapse.register_user(localpart, password, displayname=displayname)
        login = await synapse.login(localpart, password)
        store_dir = Path(store_dir)
        store_dir.mkdir(parents=True, exist_ok=True)
        config = nio.AsyncClientConfig(
            encryption_enabled=True,
            store_sync_tokens=True,
            max_timeouts=None,
            request_timeout=60,
        )
        client = nio.AsyncClient(
            synapse.url,
            login["user_id"],
            device_id=login["device_id"],
            store_path=str(store_dir),
            config=config,
        )
        client.restore_login(login["user_id"], login["device_id"], login["access_token"])
        user = cls(synapse, client)
        try:
            if client.should_upload_keys:
                resp = await client.keys_upload()
                if not isinstance(resp, nio.KeysUploadResponse):
                    raise NioUserError(f"key upload failed for {user.user_id}: {resp}")
            await user._sync_once(first=True)
        except BaseException:
            await client.close()
            raise
        user._task = asyncio.create_task(user._sync_loop(), name=f"nio-sync {user.user_id}")
        return user

    async def close(self) -> None:
        """Stop the sync loop and close the client's HTTP sessions."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # the loop's failure was already reported to waiters
                pass
            self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.client.close()

    # -- sync ------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        failures = 0
        while True:
            try:
                await self._sync_once(first=False)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("sync of %s failed (%d): %r", self.user_id, failures, exc)
                if failures >= 20:
                    self._sync_error = exc
                    self._pulse()
                    raise
                await asyncio.sleep(min(0.1 * failures, 2.0))

    async def _sync_once(self, *, first: bool) -> None:
        resp = await self.client.sync(
            timeout=0 if first else SYNC_TIMEOUT_MS,
            sync_filter={"room": {"timeline": {"limit": TIMELINE_LIMIT}}},
            full_state=first or None,
        )
        if not isinstance(resp, nio.SyncResponse):
            raise NioUserError(f"sync failed: {resp}")
        self._sync_count += 1
        for room_id, info in resp.rooms.join.items():
            events = list(info.timeline.events)
            if info.timeline.limited and info.timeline.prev_batch:
                events = await self._backfill(room_id, info.timeline.prev_batch) + events
            for event in events:
                self._record(room_id, event)
        for room_id, info in resp.rooms.invite.items():
            self._record_invite(room_id, info)
        await self._after_sync()
        self._pulse()

    async def _after_sync(self) -> None:
        client = self.client
        await self._join_pending_invites()
        await client.send_to_device_messages()
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
        if client.should_claim_keys:
            await client.keys_claim(client.get_users_for_key_claiming())
        self._retry_undecrypted()
        await self._request_missing_keys()

    async def _backfill(self, room_id: str, prev_batch: str) -> list[nio.Event]:
        """Fetch events a limited sync skipped, back to the newest one already known."""
        older: list[nio.Event] = []
        start: str | None = prev_batch
        while start:
            resp = await self.client.room_messages(
                room_id, start=start, direction=nio.MessageDirection.back, limit=TIMELINE_LIMIT
            )
            if not isinstance(resp, nio.RoomMessagesResponse):
                log.warning("back-fill of %s failed: %s", room_id, resp)
                break
            reached_known = False
            for event in resp.chunk:
                if event.event_id in self._event_index:
                    reached_known = True
                    break
                older.append(event)
            if reached_known or not resp.chunk or resp.end == start:
                break
            start = resp.end
        older.reverse()
        return older

    def _record(self, room_id: str, event: nio.Event) -> None:
        event_id = getattr(event, "event_id", None)
        timeline = self._timeline.setdefault(room_id, [])
        if event_id and event_id in self._event_index:
            return
        if event_id:
            self._event_index[event_id] = (room_id, len(timeline))
        timeline.append(event)
        if isinstance(event, nio.MegolmEvent) and event_id:
            self._undecrypted[event_id] = (room_id, event, time.monotonic())

    def _record_invite(self, room_id: str, info: Any) -> None:
        if any(inv.room_id == room_id for inv in self._invites):
            return
        inviter = None
        is_direct = False
        state = []
        for event in info.invite_state:
            source = dict(getattr(event, "source", {}) or {})
            state.append(source)
            if source.get("type") == "m.room.member" and source.get("state_key") == self.user_id:
                inviter = source.get("sender")
                is_direct = bool(source.get("content", {}).get("is_direct", False))
        self._invites.append(Invite(room_id, inviter, is_direct, state))

    async def _join_pending_invites(self) -> None:
        for room_id in list(self.client.invited_rooms):
            if room_id in self.client.rooms or self._join_failures.get(room_id, 0) >= 5:
                continue
            resp = await self.client.join(room_id)
            if isinstance(resp, nio.JoinResponse):
                continue
            self._join_failures[room_id] = self._join_failures.get(room_id, 0) + 1
            log.warning("%s could not join %s: %s", self.user_id, room_id, resp)

    def _retry_undecrypted(self) -> None:
        olm = self.client.olm
        if olm is None:
            return
        for event_id, (room_id, event, _) in list(self._undecrypted.items()):
            # Retry only once the session has arrived: a failed attempt makes nio suspect a
            # wedged Olm session and start a new one.
            if not olm.inbound_group_store.get(room_id, event.sender_key, event.session_id):
                continue
            try:
                decrypted = self.client.decrypt_event(event)
            except nio.EncryptionError:
                continue
            if isinstance(decrypted, nio.MegolmEvent):
                continue
            _, index = self._event_index[event_id]
            self._timeline[room_id][index] = decrypted
            del self._undecrypted[event_id]

    async def _request_missing_keys(self) -> None:
        now = time.monotonic()
        for event_id, (_, event, seen) in list(self._undecrypted.items()):
            if now - seen < KEY_REQUEST_AFTER or event.session_id in self._key_requested:
                continue
            self._key_requested.add(event.session_id)
            try:
                await self.client.request_room_key(event)
            except nio.LocalProtocolError:
                pass
            log.info("%s requested the key of session %s", self.user_id, event.session_id)

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """Return check()'s first truthy value, re-checking after each sync."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if self._sync_error is not None:
                raise NioUserError(f"sync loop of {self.user_id} died") from self._sync_error
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.user_id}: timed out after {timeout} s waiting for {what}")
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
            except asyncio.TimeoutError:
                pass

    async def wait_synced(self, timeout: float = 30) -> None:
        """Wait until one more full sync cycle has completed."""
        target = self._sync_count + 2
        await self._wait_until(lambda: self._sync_count >= target, timeout, "a sync")

    # -- reading ---------------------------------------------------------------------

    def events(self, room_id: str) -> list[dict[str, Any]]:
        """Return the readable timeline events of a room seen so far, oldest first.

        Encrypted events appear decrypted; ones that cannot be decrypted yet are left out.
        """
        return [
            dict(ev.source)
            for ev in self._timeline.get(room_id, [])
            if not isinstance(ev, nio.MegolmEvent)
        ]

    def event(self, event_id: str) -> nio.Event | None:
        """Return nio's event object for ``event_id`` (decrypted if possible), or None."""
        where = self._event_index.get(event_id)
        if where is None:
            return None
        return self._timeline[where[0]][where[1]]

    def undecrypted(self, room_id: str) -> list[str]:
        """Return the ids of the room's events that are still undecryptable."""
        return [eid for eid, (rid, _, _) in self._undecrypted.items() if rid == room_id]

    async def wait_for_invite(
        self, predicate: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 30
    ) -> str:
        """Wait for an invite not yet returned by this method, join it, and return its room id.

        The predicate gets a dict with ``room_id``, ``inviter``, ``is_direct`` and ``state``
        (stripped state event dicts). Raises TimeoutError.
        """

        def find() -> str | None:
            for invite in self._invites:
                if invite.room_id in self._invites_taken:
                    continue
                if predicate is None or predicate(invite.as_dict()):
                    return invite.room_id
            return None

        room_id: str = await self._wait_until(find, timeout, "an invite")
        self._invites_taken.add(room_id)
        await self._wait_until(
            lambda: room_id in self.client.rooms, timeout, f"joining {room_id}"
        )
        return room_id

    async def wait_for_message(
        self, room_id: str, predicate: Predicate, timeout: float = 30
    ) -> dict[str, Any]:
        """Return the first readable timeline event of the room (decrypted source dict) that
        satisfies ``predicate``, including events received before the call.

        Raises TimeoutError (naming the count of still-undecryptable events).
        """

        def find() -> dict[str, Any] | None:
            for source in self.events(room_id):
                if predicate(source):
                    return source
            return None

        try:
            result: dict[str, Any] = await self._wait_until(find, timeout, f"a message in {room_id}")
        except TimeoutError as exc:
            pending = len(self.undecrypted(room_id))
            raise TimeoutError(f"{exc} ({pending} event(s) still undecryptable)") from None
        return result

    def read_receipt(self, room_id: str, user_id: str) -> str | None:
        """The event ``user_id``'s latest (unthreaded) read receipt in the room is on, as this
        client has synced it; None when it has seen none."""
        room = self.client.rooms.get(room_id)
        receipt = room.read_receipts.get(user_id) if room is not None else None
        return receipt.event_id if receipt is not None else None

    async def wait_for_receipt(self, room_id: str, user_id: str, event_id: str, timeout: float = 30) -> None:
        """Wait until ``user_id``'s read receipt in the room is on ``event_id``. Raises TimeoutError."""
        await self._wait_until(lambda: self.read_receipt(room_id, user_id) == event_id, timeout,
                               f"a read receipt of {user_id} on {event_id}")

    async def wait_for_member(
        self, room_id: str, user_id: str, membership: str = "join", timeout: float = 30
    ) -> None:
        """Wait until this client's view of the room has ``user_id`` in ``membership``."""

        def check() -> bool:
            room = self.client.rooms.get(room_id)
            if room is None:
                return False
            if membership == "join":
                return user_id in room.users and user_id not in room.invited_users
            if membership == "invite":
                return user_id in room.invited_users
            return user_id not in room.users

        await self._wait_until(check, timeout, f"{user_id} to {membership} {room_id}")

    async def wait_until_device_known(
        self, user_id: str, device_id: str, timeout: float = 30
    ) -> None:
        """Wait until this client has fetched the keys of ``user_id``'s ``device_id``."""

        def check() -> bool:
            return any(
                dev.device_id == device_id
                for dev in self.client.device_store.active_user_devices(user_id)
            )

        await self._wait_until(check, timeout, f"keys of {user_id}'s device {device_id}")

    # -- writing ---------------------------------------------------------------------

    async def _room(self, room_id: str, timeout: float = 30) -> nio.MatrixRoom:
        room: nio.MatrixRoom = await self._wait_until(
            lambda: self.client.rooms.get(room_id), timeout, f"room {room_id} in sync"
        )
        return room

    async def send_event(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Send an event (encrypted when the room is) and return its event id.

        Raises NioUserError if the server refuses it.
        """
        await self._room(room_id)
        resp = await self.client.room_send(
            room_id, event_type, content, ignore_unverified_devices=True
        )
        if not isinstance(resp, nio.RoomSendResponse):
            raise NioUserError(f"send to {room_id} failed: {resp}")
        return str(resp.event_id)

    async def send_text(
        self,
        room_id: str,
        body: str,
        *,
        thread_root: str | None = None,
        reply_to: str | None = None,
        formatted_body: str | None = None,
    ) -> str:
        """Send an m.text message, optionally HTML-formatted, in a thread or as a reply."""
        content: dict[str, Any] = {"msgtype": "m.text", "body": body}
        if formatted_body is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = formatted_body
        if thread_root is not None:
            content["m.relates_to"] = {
                "rel_type": "m.thread",
                "event_id": thread_root,
                "is_falling_back": reply_to is None,
                "m.in_reply_to": {"event_id": reply_to or thread_root},
            }
        elif reply_to is not None:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        return await self.send_event(room_id, "m.room.message", content)

    async def upload(self, data: bytes, filename: str, content_type: str) -> str:
        """Upload bytes to the media repository and return the mxc URI."""
        resp = await self._raw(
            "POST",
            "/_matrix/media/v3/upload?filename=" + quote(filename),
            data=data,
            headers={"Content-Type": content_type},
        )
        return str(resp["content_uri"])

    async def send_file(
        self, room_id: str, data: bytes, filename: str, mimetype: str
    ) -> str:
        """Upload a file (encrypted when the room is) and send it as m.image or m.file."""
        room = await self._room(room_id)
        msgtype = "m.image" if mimetype.startswith("image/") else "m.file"
        content: dict[str, Any] = {
            "msgtype": msgtype,
            "body": filename,
            "filename": filename,
            "info": {"mimetype": mimetype, "size": len(data)},
        }
        if room.encrypted:
            ciphertext, keys = encrypt_attachment(data)
            mxc = await self.upload(ciphertext, filename, "application/octet-stream")
            content["file"] = {**keys, "url": mxc, "mimetype": mimetype}
        else:
            content["url"] = await self.upload(data, filename, mimetype)
        return await self.send_event(room_id, "m.room.message", content)

    async def download(self, mxc: str) -> bytes:
        """Download media by mxc URI with the authenticated media API."""
        if not mxc.startswith("mxc://"):
            raise ValueError(f"not an mxc URI: {mxc!r}")
        server, _, media_id = mxc[len("mxc://") :].partition("/")
        path = f"/_matrix/client/v1/media/download/{quote(server)}/{quote(media_id)}"
        data: bytes = await self._raw("GET", path, raw_response=True)
        return data

    async def download_decrypted(self, content: dict[str, Any]) -> bytes:
        """Return the plaintext of a file message's media: decrypts ``content["file"]``, or
        downloads ``content["url"]`` as is. Raises nio.EncryptionError on a hash mismatch."""
        if "file" in content:
            file = content["file"]
            ciphertext = await self.download(file["url"])
            plain: bytes = decrypt_attachment(
                ciphertext, file["key"]["k"], file["hashes"]["sha256"], file["iv"]
            )
            return plain
        return await self.download(content["url"])

    async def create_room(
        self,
        *,
        invite: list[str] = (),  # type: ignore[assignment]
        is_direct: bool = False,
        encrypted: bool = True,
        name: str | None = None,
    ) -> str:
        """Create a private room (encrypted by default), wait until it is synced, return it."""
        initial_state = []
        if encrypted:
            initial_state.append(
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            )
        resp = await self.client.room_create(
            is_direct=is_direct,
            invite=list(invite),
            name=name,
            preset=nio.RoomPreset.trusted_private_chat
            if is_direct
            else nio.RoomPreset.private_chat,
            initial_state=initial_state,
        )
        if not isinstance(resp, nio.RoomCreateResponse):
            raise NioUserError(f"room creation failed: {resp}")
        await self._room(resp.room_id)
        return str(resp.room_id)

    async def create_dm(self, other_mxid: str, *, encrypted: bool = True) -> str:
        """Create a direct room inviting ``other_mxid`` (encrypted by default); return its id."""
        return await self.create_room(invite=[other_mxid], is_direct=True, encrypted=encrypted)

    # -- raw HTTP --------------------------------------------------------------------

    async def _raw(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        raw_response: bool = False,
    ) -> Any:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        all_headers = {"Authorization": f"Bearer {self.client.access_token}"}
        all_headers.update(headers or {})
        async with self._http.request(
            method, self.synapse.url + path, json=json_body, data=data, headers=all_headers
        ) as resp:
            body = await resp.read()
            if resp.status >= 400:
                raise NioUserError(f"{method} {path.split('?')[0]}: HTTP {resp.status} {body[:300]!r}")
            if raw_response:
                return body
            return json.loads(body)

    async def get_raw_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        """Return the event as the server stores it (ciphertext for encrypted rooms)."""
        path = f"/_matrix/client/v3/rooms/{quote(room_id)}/event/{quote(event_id)}"
        result: dict[str, Any] = await self._raw("GET", path)
        return result
