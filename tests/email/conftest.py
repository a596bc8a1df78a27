"""Fixtures of the email tests.

The real mail servers (``mailservers``, ``mailservers_factory``, ``mail_user``) come from
tests/rig/mail_fixtures.py through the root conftest, so the session's bridges and these tests
share one set. ``email_logins`` logs users in to their mailboxes on the session's bridges and
logs them out after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.email.e2e import EmailLogins
from tests.rig.mailservers import MailServers


@pytest_asyncio.fixture(loop_scope="session")
async def email_logins(mailservers: MailServers) -> AsyncIterator[EmailLogins]:
    """Email logins on the session's bridges, every one of them logged out after the test."""
    logins = EmailLogins(mailservers)
    try:
        yield logins
    finally:
        await logins.logout_all()
