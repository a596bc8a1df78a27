"""Runtime database access. :class:`Store` bundles one object per table."""

from __future__ import annotations

from mautrix.util.async_db import Database

from .ghosts import GhostRow, Ghosts
from .inbox import Inbox, InboxRow
from .logins import LoginRow, Logins
from .matrix_events import MatrixEvents, Transactions
from .messages import MessageRow, Messages
from .portals import PortalRow, Portals
from .users import UserRow, Users


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.users = Users(db)
        self.logins = Logins(db)
        self.portals = Portals(db)
        self.ghosts = Ghosts(db)
        self.messages = Messages(db)
        self.inbox = Inbox(db)
        self.matrix_events = MatrixEvents(db)
        self.transactions = Transactions(db)


__all__ = [
    "GhostRow", "InboxRow", "LoginRow", "MessageRow", "PortalRow", "Store", "UserRow",
]
