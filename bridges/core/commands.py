"""The management room: a DM with the bot, and the commands typed there.

A user who invites the bot to a direct chat gets a management room. Commands (optionally
prefixed with ``!cal``) are parsed by an argparse parser that raises instead of exiting.
A login walks its flow's fields one message at a time; a message that carried a secret is
redacted as soon as it is read.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__
from .errors import CaliopenError, UserInputError
from .login import LoginSession
from .matrix_api import IncomingEvent
from .network import LoginField, StepType, SupportsStartChat

if TYPE_CHECKING:
    from .bridge import Bridge

log = logging.getLogger("caliopen.commands")

PREFIX = "!cal"

HELP = """\
Commands (send them here, in this room):
  help                        this list
  networks                    which networks are on, for the server and for you
  enable <network>            switch a network on for yourself
  disable <network>           switch a network off for yourself (logins disconnect, nothing is deleted)
  login <network> [flow]      connect an account (the bot asks for each field)
  logins                      your logins and their state
  logout <login-id>           disconnect and forget a login
  start-chat <network> <who> [--login ID]   open a room with an address or a number
  cancel                      stop a login in progress
  ping                        is the bridge alive
  version                     the bridge's version"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserInputError(message)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise UserInputError(message or "")


def _parser() -> _Parser:
    p = _Parser(prog="", add_help=False)
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    for name in ("help", "networks", "logins", "ping", "version", "cancel"):
        sub.add_parser(name, add_help=False)
    for name in ("enable", "disable"):
        sub.add_parser(name, add_help=False).add_argument("network")
    lp = sub.add_parser("login", add_help=False)
    lp.add_argument("network")
    lp.add_argument("flow", nargs="?")
    sub.add_parser("logout", add_help=False).add_argument("login_id")
    sc = sub.add_parser("start-chat", add_help=False)
    sc.add_argument("network")
    sc.add_argument("--login", dest="login_id")
    sc.add_argument("identifier", nargs="+")  # the rest of the line: "+33 6 12 34 56 78"
    return p


@dataclass
class _ChatLogin:
    session: LoginSession
    values: dict[str, str] = field(default_factory=dict)
    pending: list[LoginField] = field(default_factory=list)


class CommandProcessor:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.parser = _parser()
        self.chat_logins: dict[str, _ChatLogin] = {}

    async def on_bot_invite(self, room_id: str, inviter: str, is_direct: bool) -> None:
        matrix = self.bridge.matrix
        bot = getattr(matrix, "bot_intent", None)
        level = self.bridge.config.permission(inviter)
        if level is None or bot is None:
            log.info("Refused an invite from a user without access")
            if bot is not None:
                await bot.leave_room(room_id, reason="You are not allowed to use this bridge.")
            return
        await matrix.ensure_in_room(room_id, matrix.bot_mxid)
        user = await self.bridge.store.users.get_or_create(inviter)
        if is_direct or user.management_room is None:
            user.management_room = room_id
            await self.bridge.store.users.save(user)
            await matrix.send_notice(room_id, "Hello! This is your Caliopen management room.\n\n" + HELP)

    async def on_message(self, evt: IncomingEvent) -> None:
        user = await self.bridge.store.users.by_management_room(evt.room_id)
        if user is None or user.mxid != evt.sender:
            return
        if evt.content.get("msgtype") not in ("m.text", None):
            return
        text = str(evt.content.get("body", "")).strip()
        if not await self.bridge.store.matrix_events.claim(evt.event_id, evt.room_id):
            return
        reply = await self.handle(evt.sender, evt.room_id, evt.event_id, text)
        if reply:
            await self.bridge.matrix.send_notice(evt.room_id, reply)
        await self.bridge.store.matrix_events.set_state(evt.event_id, "done")

    async def handle(self, sender: str, room_id: str, event_id: str, text: str) -> str | None:
        """Run one line; returns the answer to send (None: nothing to say)."""
        chat = self.chat_logins.get(sender)
        if chat is not None and chat.pending and text.lower() not in ("cancel", f"{PREFIX} cancel"):
            return await self._login_input(sender, room_id, event_id, chat, text)
        if text.startswith(PREFIX):
            text = text[len(PREFIX):].strip()
        try:
            args = self.parser.parse_args(shlex.split(text))
        except (UserInputError, ValueError) as e:
            word = text.split()[0] if text.split() else ""
            return f"Unknown command {word!r}. Send `help` for the list." if "invalid choice" in str(e) or not word \
                else f"{e}. Send `help` for the list."
        if args.cmd is None:
            return "Send `help` for the list of commands."
        level = self.bridge.config.permission(sender)
        if level == "relay" and args.cmd not in ("help", "ping", "version", "networks"):
            return "You are not allowed to log in on this bridge."
        try:
            return await getattr(self, "cmd_" + args.cmd.replace("-", "_"))(sender, room_id, args)
        except CaliopenError as e:
            return e.user_message
        except Exception as e:
            log.exception("Command %s failed", args.cmd)
            return f"That failed ({type(e).__name__}). The bridge log has the details."

    async def cmd_help(self, sender: str, room_id: str, args: Any) -> str:
        return HELP

    async def cmd_ping(self, sender: str, room_id: str, args: Any) -> str:
        logins = self.bridge.user_logins(sender)
        return "Pong. " + (f"You have {len(logins)} login(s)." if logins else "You have no logins yet.")

    async def cmd_version(self, sender: str, room_id: str, args: Any) -> str:
        return f"Caliopen {__version__}"

    async def cmd_networks(self, sender: str, room_id: str, args: Any) -> str:
        lines = []
        for name in self.bridge.config["networks"]:
            reason = self.bridge.network_disabled_for(sender, name)
            if name not in self.bridge.connectors:
                state = "off on this server"
            elif reason:
                state = "off for you"
            else:
                state = "on"
            lines.append(f"- {name}: {state}")
        return "Networks:\n" + "\n".join(lines)

    async def cmd_enable(self, sender: str, room_id: str, args: Any) -> str:
        await self.bridge.set_network_enabled(sender, args.network, True)
        return f"{args.network} is on for you."

    async def cmd_disable(self, sender: str, room_id: str, args: Any) -> str:
        await self.bridge.set_network_enabled(sender, args.network, False)
        return f"{args.network} is off for you: its logins are disconnected and its rooms stop bridging. " \
               f"Nothing was deleted; `enable {args.network}` switches it back on."

    async def cmd_logins(self, sender: str, room_id: str, args: Any) -> str:
        rows = self.bridge.user_logins(sender)
        if not rows:
            return "You have no logins. Send `login <network>` to add one."
        lines = []
        for row in rows:
            extra = f" ({row.state_error})" if row.state_error else ""
            lines.append(f"- {row.id}: {row.network} {row.remote_name}: {row.state}{extra}")
        return "Your logins:\n" + "\n".join(lines)

    async def cmd_logout(self, sender: str, room_id: str, args: Any) -> str:
        await self.bridge.logout(sender, args.login_id)
        return f"Logged out of {args.login_id}."

    async def cmd_cancel(self, sender: str, room_id: str, args: Any) -> str:
        chat = self.chat_logins.pop(sender, None)
        if chat is None:
            return "No login in progress."
        await self.bridge.login_sessions.cancel(chat.session)
        return "Login cancelled."

    async def cmd_start_chat(self, sender: str, room_id: str, args: Any) -> str:
        bridge = self.bridge
        reason = bridge.network_disabled_for(sender, args.network)
        if reason:
            raise UserInputError(reason)
        candidates = [r for r in bridge.user_logins(sender) if r.network == args.network
                      and (args.login_id is None or r.id == args.login_id)]
        if not candidates:
            raise UserInputError(f"You have no {args.network} login. Send `login {args.network}` first.")
        room = await start_chat(bridge, candidates[0].id, " ".join(args.identifier))
        return f"Opened {room}: you are invited."

    async def cmd_login(self, sender: str, room_id: str, args: Any) -> str:
        if args.network not in self.bridge.config["networks"]:
            raise UserInputError(f"There is no network called {args.network}.")
        session = await self.bridge.login_sessions.start(sender, args.network, args.flow)
        chat = _ChatLogin(session)
        self.chat_logins[sender] = chat
        return await self._present_step(sender, room_id, chat)

    async def _present_step(self, sender: str, room_id: str, chat: _ChatLogin) -> str:
        step = chat.session.step
        assert step is not None
        if step.type == StepType.COMPLETE:
            self.chat_logins.pop(sender, None)
            login = self.bridge.logins.get(chat.session.login_id or "")
            name = login.remote_name if login else ""
            return f"Logged in to {chat.session.network} as {name} (login {chat.session.login_id})."
        if step.type == StepType.DISPLAY_AND_WAIT:
            text = (step.instructions or "") + (f"\n{step.display_data}" if step.display_data else "")
            await self.bridge.matrix.send_notice(room_id, text)
            await self.bridge.login_sessions.wait(chat.session)
            return await self._present_step(sender, room_id, chat)
        chat.pending = list(step.fields)
        chat.values = {}
        intro = (step.instructions + "\n") if step.instructions else ""
        return intro + self._ask(chat.pending[0])

    @staticmethod
    def _ask(f: LoginField) -> str:
        parts = [f"Send your {f.name}"]
        if f.description:
            parts.append(f" ({f.description})")
        if f.options:
            parts.append(f", one of: {', '.join(f.options)}")
        if f.default is not None:
            parts.append(f". Send `-` for the default: {f.default}")
        if f.is_secret:
            parts.append(". The bridge deletes that message once it has read it")
        return "".join(parts) + "."

    async def _login_input(self, sender: str, room_id: str, event_id: str, chat: _ChatLogin, text: str) -> str:
        f = chat.pending.pop(0)
        if f.is_secret:
            try:
                await self.bridge.matrix.redact(room_id, event_id, self.bridge.matrix.bot_mxid, "secret")
            except Exception:
                log.warning("Could not redact a message carrying a secret", exc_info=True)
        value = text
        if text == "-" and f.default is not None:
            value = f.default
        elif text == "-" and f.optional:
            value = ""
        chat.values[f.id] = value
        if chat.pending:
            return self._ask(chat.pending[0])
        try:
            await self.bridge.login_sessions.submit(chat.session, chat.values)
        except CaliopenError as e:
            # Ask the whole step again; the process stays usable.
            step = chat.session.step
            assert step is not None
            chat.pending = list(step.fields)
            chat.values = {}
            return f"{e.user_message}\nLet's try again. " + self._ask(chat.pending[0])
        return await self._present_step(sender, room_id, chat)


async def start_chat(bridge: Bridge, login_id: str, identifier: str) -> str:
    """Open (or find) the portal with ``identifier`` on a login; returns its room ID."""
    client = bridge.client_for(login_id)
    if not isinstance(client, SupportsStartChat):
        raise UserInputError("This network cannot start new conversations.")
    portal_id, info = await client.resolve_identifier(identifier)
    portal = await bridge.get_portal(login_id, portal_id)
    room = await portal.submit(lambda: portal.ensure_room(info))
    login = bridge.logins[login_id]
    await bridge.matrix.ensure_in_room(room, login.user_mxid)
    return room
