"""A portal: one bridged conversation of one login, with one ordered queue.

- :mod:`portal_base`: the row, the room, the queue (every job of a portal runs in order).
- :mod:`portal_remote`: remote → Matrix (from the durable inbox).
- :mod:`portal_matrix`: Matrix → remote (the user's messages, reactions, redactions, reads).
"""

from __future__ import annotations

from .portal_matrix import MatrixHandling
from .portal_remote import RemoteHandling


class Portal(RemoteHandling, MatrixHandling):
    """A bridged conversation; see the module docstring for where each direction lives."""
