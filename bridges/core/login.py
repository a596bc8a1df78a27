"""Login sessions: a network's login flow driven step by step, from chat or over HTTP.

The chat commands and the provisioning API share these sessions. A COMPLETE step is persisted
by :meth:`bridges.core.bridge.Bridge.finish_login` (secrets sealed) before it is reported.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import UserInputError
from .network import LoginProcess, LoginStep, StepType

if TYPE_CHECKING:
    from .bridge import Bridge

SESSION_TTL = 30 * 60


@dataclass
class LoginSession:
    id: str
    user_mxid: str
    network: str
    flow_id: str
    process: LoginProcess
    step: LoginStep | None = None
    login_id: str | None = None
    created: float = field(default_factory=time.monotonic)


def step_json(session: LoginSession, step: LoginStep) -> dict[str, Any]:
    """A step in the shape of mautrix bridgev2's provisioning API."""
    out: dict[str, Any] = {
        "login_id": session.id,
        "type": step.type.value,
        "step_id": step.step_id,
        "instructions": step.instructions,
    }
    if step.type == StepType.USER_INPUT:
        out["user_input"] = {
            "fields": [
                {"type": f.type.value, "id": f.id, "name": f.name, "description": f.description,
                 **({"default_value": f.default} if f.default is not None else {}),
                 **({"options": list(f.options)} if f.options else {}),
                 **({"optional": True} if f.optional else {})}
                for f in step.fields
            ]
        }
    elif step.type == StepType.DISPLAY_AND_WAIT:
        out["display_and_wait"] = {"type": step.display_type or "nothing", "data": step.display_data}
    elif step.type == StepType.COMPLETE:
        out["complete"] = {"user_login_id": session.login_id}
    return out


class LoginSessions:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.sessions: dict[str, LoginSession] = {}

    def flows(self, network: str | None = None) -> list[tuple[str, Any]]:
        out = []
        for name, connector in self.bridge.connectors.items():
            if network and name != network:
                continue
            for flow in connector.get_login_flows():
                out.append((name, flow))
        return out

    async def start(self, user_mxid: str, network: str, flow_id: str | None) -> LoginSession:
        """Begin a login. Raises UserInputError for a network that is off or a flow that is unknown."""
        reason = self.bridge.network_disabled_for(user_mxid, network)
        if reason:
            raise UserInputError(reason)
        connector = self.bridge.connectors[network]
        flows = connector.get_login_flows()
        if flow_id is None:
            flow_id = flows[0].id
        if flow_id not in {f.id for f in flows}:
            raise UserInputError(
                f"{network} has no login flow {flow_id!r}; choose one of: {', '.join(f.id for f in flows)}"
            )
        self._expire()
        session = LoginSession(secrets.token_urlsafe(12), user_mxid, network, flow_id,
                               connector.create_login(user_mxid, flow_id))
        self.sessions[session.id] = session
        session.step = await session.process.start()
        await self._after(session)
        return session

    def get(self, user_mxid: str, session_id: str) -> LoginSession:
        session = self.sessions.get(session_id)
        if session is None or session.user_mxid != user_mxid:
            raise UserInputError("That login is not in progress (it may have expired).")
        return session

    async def submit(self, session: LoginSession, values: dict[str, str]) -> LoginStep:
        if session.step is None or session.step.type != StepType.USER_INPUT:
            raise UserInputError("This login step does not take input.")
        missing = [f.name for f in session.step.fields if not f.optional and not values.get(f.id)]
        if missing:
            raise UserInputError(f"Missing: {', '.join(missing)}")
        session.step = await session.process.submit_input(values)
        await self._after(session)
        return session.step

    async def wait(self, session: LoginSession) -> LoginStep:
        if session.step is None or session.step.type != StepType.DISPLAY_AND_WAIT:
            raise UserInputError("This login step is not waiting for anything.")
        session.step = await session.process.wait()
        await self._after(session)
        return session.step

    async def cancel(self, session: LoginSession) -> None:
        self.sessions.pop(session.id, None)
        await session.process.cancel()

    async def _after(self, session: LoginSession) -> None:
        step = session.step
        if step is not None and step.type == StepType.COMPLETE and session.login_id is None:
            assert step.result is not None
            row = await self.bridge.finish_login(session.user_mxid, session.network, step.result)
            session.login_id = row.id
            self.sessions.pop(session.id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s.id for s in self.sessions.values() if now - s.created > SESSION_TTL]:
            self.sessions.pop(sid, None)
