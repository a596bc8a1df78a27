"""Fixtures of the email tests: the real mail servers of tests/rig."""

from __future__ import annotations

from tests.rig.mail_fixtures import mail_user, mailservers, mailservers_factory

__all__ = ["mail_user", "mailservers", "mailservers_factory"]
