"""The provisioning HTTP API, shaped like mautrix bridgev2's (``/_matrix/provision/v3``).

Authentication: ``Authorization: Bearer <provisioning.shared_secret>`` and the acting user in
``?user_id=``. Flow IDs are qualified by network (``email.password``, ``sms.twilio``) because
one Caliopen serves several networks.

Routes::

    GET  /v3/whoami                                  the user, their logins, the networks
    GET  /v3/login/flows                             every flow of every enabled network
    POST /v3/login/start/{flow_id}                   first step
    POST /v3/login/step/{login_id}/{step_id}/user_input        body: field values
    POST /v3/login/step/{login_id}/{step_id}/display_and_wait  waits for the network
    GET  /v3/logins                                  the user's login IDs
    POST /v3/logout/{login_id}
    GET  /v3/capabilities
    POST /v3/create_dm/{identifier}?login_id=        open a portal with someone
    POST /v3/networks/{network}/enable | /disable    the user's own switch
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from .. import __version__
from .commands import start_chat
from .errors import CaliopenError, UserInputError
from .login import step_json
from .network import StepType

if TYPE_CHECKING:
    from .bridge import Bridge

log = logging.getLogger("caliopen.provisioning")

Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


class Provisioning:
    def __init__(self, bridge: Bridge, secret: str, prefix: str) -> None:
        self.bridge = bridge
        self.secret = secret
        self.prefix = prefix.rstrip("/") + "/v3"

    def register(self, app: web.Application) -> None:
        r = app.router
        p = self.prefix
        r.add_get(f"{p}/whoami", self._wrap(self.whoami))
        r.add_get(f"{p}/login/flows", self._wrap(self.flows))
        r.add_post(f"{p}/login/start/{{flow_id}}", self._wrap(self.login_start))
        r.add_post(f"{p}/login/step/{{login_id}}/{{step_id}}/{{step_type}}", self._wrap(self.login_step))
        r.add_get(f"{p}/logins", self._wrap(self.logins))
        r.add_post(f"{p}/logout/{{login_id}}", self._wrap(self.logout))
        r.add_get(f"{p}/capabilities", self._wrap(self.capabilities))
        r.add_post(f"{p}/create_dm/{{identifier}}", self._wrap(self.create_dm))
        r.add_post(f"{p}/networks/{{network}}/{{action}}", self._wrap(self.network_switch))

    def _wrap(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
            if not token or not hmac.compare_digest(token, self.secret):
                return _error(401, "M_UNKNOWN_TOKEN", "Wrong or missing provisioning secret")
            user = request.query.get("user_id", "")
            if not user.startswith("@") or ":" not in user:
                return _error(400, "M_BAD_JSON", "user_id must be a Matrix user ID")
            if self.bridge.config.permission(user) not in ("user", "admin"):
                return _error(403, "M_FORBIDDEN", "That user may not log in on this bridge")
            try:
                return await handler(request, user)
            except CaliopenError as e:
                return _error(400, "M_BAD_REQUEST", e.user_message)
            except web.HTTPException:
                raise
            except Exception as e:
                log.exception("Provisioning %s failed", request.path)
                return _error(500, "M_UNKNOWN", f"internal error ({type(e).__name__})")

        return wrapped

    async def whoami(self, request: web.Request, user: str) -> web.Response:
        b = self.bridge
        logins = [
            {"id": r.id, "network": r.network, "name": r.remote_name, "remote_id": r.remote_id,
             "state": {"state_event": r.state, "error": r.state_error}, "space_room": r.space_room}
            for r in b.user_logins(user)
        ]
        networks = {
            name: {"enabled_on_server": name in b.connectors,
                   "enabled_for_user": b.network_disabled_for(user, name) is None}
            for name in b.config["networks"]
        }
        db_user = await b.store.users.get(user)
        return web.json_response({
            "network": {"name": "Caliopen", "version": __version__},
            "login_flows": [self._flow(n, f) for n, f in b.login_sessions.flows()],
            "homeserver": b.domain, "bridge_bot": b.matrix.bot_mxid,
            "management_room": db_user.management_room if db_user else None,
            "logins": logins, "networks": networks,
        })

    @staticmethod
    def _flow(network: str, flow: Any) -> dict[str, Any]:
        return {"id": f"{network}.{flow.id}", "name": flow.name, "description": flow.description,
                "network": network}

    async def flows(self, request: web.Request, user: str) -> web.Response:
        return web.json_response({"flows": [self._flow(n, f) for n, f in self.bridge.login_sessions.flows()]})

    async def login_start(self, request: web.Request, user: str) -> web.Response:
        network, _, flow = request.match_info["flow_id"].partition(".")
        if network not in self.bridge.config["networks"]:
            raise UserInputError(f"There is no network called {network}.")
        session = await self.bridge.login_sessions.start(user, network, flow or None)
        assert session.step is not None
        return web.json_response(step_json(session, session.step))

    async def login_step(self, request: web.Request, user: str) -> web.Response:
        sessions = self.bridge.login_sessions
        session = sessions.get(user, request.match_info["login_id"])
        step_type = request.match_info["step_type"]
        if session.step is None or session.step.step_id != request.match_info["step_id"]:
            raise UserInputError("That is not the current step of this login.")
        if step_type == StepType.USER_INPUT.value:
            try:
                body = await request.json()
            except ValueError:
                raise UserInputError("The body must be a JSON object of field values.") from None
            if not isinstance(body, dict):
                raise UserInputError("The body must be a JSON object of field values.")
            step = await sessions.submit(session, {str(k): str(v) for k, v in body.items()})
        elif step_type == StepType.DISPLAY_AND_WAIT.value:
            step = await sessions.wait(session)
        else:
            raise UserInputError(f"Unknown step type {step_type}.")
        return web.json_response(step_json(session, step))

    async def logins(self, request: web.Request, user: str) -> web.Response:
        return web.json_response({"login_ids": [r.id for r in self.bridge.user_logins(user)]})

    async def logout(self, request: web.Request, user: str) -> web.Response:
        await self.bridge.logout(user, request.match_info["login_id"])
        return web.json_response({})

    async def capabilities(self, request: web.Request, user: str) -> web.Response:
        caps = {}
        for name, connector in self.bridge.connectors.items():
            c = connector.get_capabilities()
            caps[name] = {"max_text_length": c.max_text_length, "max_file_size": c.max_file_size,
                          "formatted_text": c.formatted_text, "threads": c.threads, "media": c.media}
        return web.json_response({"networks": caps})

    async def create_dm(self, request: web.Request, user: str) -> web.Response:
        login_id = request.query.get("login_id")
        mine = self.bridge.user_logins(user)
        if login_id is None:
            if len(mine) != 1:
                raise UserInputError("Say which login to use (?login_id=).")
            login_id = mine[0].id
        elif login_id not in {r.id for r in mine}:
            raise UserInputError(f"You have no login {login_id}.")
        row = self.bridge.logins[login_id]
        reason = self.bridge.network_disabled_for(user, row.network)
        if reason:
            raise UserInputError(reason)
        room = await start_chat(self.bridge, login_id, request.match_info["identifier"])
        return web.json_response({"room_id": room})

    async def network_switch(self, request: web.Request, user: str) -> web.Response:
        action = request.match_info["action"]
        if action not in ("enable", "disable"):
            raise UserInputError("The action is enable or disable.")
        await self.bridge.set_network_enabled(user, request.match_info["network"], action == "enable")
        return web.json_response({})
