"""The email login flow against the real servers, and the connector's config section."""

from __future__ import annotations

import pytest

from bridges.core.errors import ConfigError, LoginError, UserInputError
from bridges.core.network import FieldType, StepType, UserLoginInfo
from bridges.email.config import EmailConfig, SaveSent
from bridges.email.imap import Security
from bridges.email.login import Account
from tests.email.conn_util import login_values, make_connector
from tests.rig.mailservers import MailServers, free_port


async def test_login_checks_both_servers_and_keeps_the_password_secret(
    mailservers: MailServers, mail_user: tuple[str, str]
) -> None:
    address, password = mail_user
    connector, _ = make_connector(mailservers)
    assert [f.id for f in connector.get_login_flows()] == ["password"]
    process = connector.create_login("@alice:test", "password")
    first = await process.start()
    assert first.type == StepType.USER_INPUT
    fields = {f.id: f for f in first.fields}
    assert list(fields) == ["email", "display_name", "imap_host", "imap_port", "imap_security", "smtp_host",
                            "smtp_port", "smtp_security", "username", "save_sent", "password"]
    assert fields["password"].is_secret and fields["email"].type == FieldType.EMAIL
    assert fields["save_sent"].optional and fields["save_sent"].options == ("auto", "always", "never")
    assert fields["save_sent"].default is None and "(auto)" in fields["save_sent"].description
    assert not fields["email"].optional and not fields["password"].optional
    step = await process.submit_input(login_values(mailservers, address.upper(), display_name="  Alice   Doe "))
    assert step.type == StepType.COMPLETE and step.result is not None
    result = step.result
    assert result.remote_id == address and result.secrets == {"password": password}
    assert password not in repr(result.metadata)
    assert result.metadata["sent_folder"] == "Sent" and result.metadata["display_name"] == "Alice Doe"
    assert result.metadata["imap_port"] == mailservers.imaps_port and result.metadata["smtp_security"] == "starttls"
    assert result.metadata["username"] == address
    assert result.metadata["save_sent"] is None  # blank: the bridge's setting
    chosen = await connector.create_login("@alice:test", "password").submit_input(
        login_values(mailservers, address, save_sent=" Never "))
    assert chosen.result is not None and chosen.result.metadata["save_sent"] == "never"
    with pytest.raises(UserInputError, match="Filing sent mail"):
        await connector.create_login("@alice:test", "password").submit_input(
            login_values(mailservers, address, save_sent="sometimes"))


async def test_wrong_password_then_retry(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, password = mail_user
    connector, _ = make_connector(mailservers)
    process = connector.create_login("@alice:test", "password")
    await process.start()
    with pytest.raises(LoginError) as err:
        await process.submit_input(login_values(mailservers, address, password="wrong"))
    assert "refused the username or password" in err.value.user_message and "wrong" not in err.value.user_message
    step = await process.submit_input(login_values(mailservers, address))  # the same process, again
    assert step.type == StepType.COMPLETE


async def test_smtp_is_checked_too(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, _ = mail_user
    connector, _ = make_connector(mailservers)
    process = connector.create_login("@alice:test", "password")
    await process.start()
    with pytest.raises(LoginError, match="outgoing mail"):
        await process.submit_input(login_values(mailservers, address, smtp_port=str(free_port())))
    # The IMAP port given as SMTP: not an SMTP server at all.
    with pytest.raises(LoginError):
        await process.submit_input(login_values(mailservers, address, smtp_port=str(mailservers.imaps_port),
                                                smtp_security="tls"))


async def test_plaintext_needs_the_admin_and_loopback(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, _ = mail_user
    values = login_values(mailservers, address, imap_port=str(mailservers.imap_port), imap_security="plain")
    strict, _ = make_connector(mailservers)
    process = strict.create_login("@alice:test", "password")
    with pytest.raises(LoginError, match="not allowed"):
        await process.submit_input(values)
    relaxed, _ = make_connector(mailservers, allow_plaintext_loopback=True)
    step = await relaxed.create_login("@alice:test", "password").submit_input(values)
    assert step.type == StepType.COMPLETE and step.result is not None
    assert step.result.metadata["imap_security"] == "plain"


def test_account_defaults_from_the_address() -> None:
    account = Account.from_input({"email": "Bob <Bob@Example.ORG>", "password": "pw", "smtp_security": "SSL"})
    assert account.email == "bob@example.org" and account.username == "bob@example.org"
    assert (account.imap_host, account.imap_port, account.imap_security) == ("imap.example.org", 993, Security.TLS)
    assert (account.smtp_host, account.smtp_port, account.smtp_security) == ("smtp.example.org", 465, Security.TLS)
    starttls = Account.from_input({"email": "bob@example.org", "password": "pw", "imap_security": "starttls"})
    assert starttls.imap_port == 143 and starttls.smtp_port == 587
    for bad in ({"email": "not an address", "password": "pw"}, {"email": "b@example.org", "password": ""},
                {"email": "b@example.org", "password": "pw", "imap_port": "99999"},
                {"email": "b@example.org", "password": "pw", "smtp_security": "maybe"},
                {"email": "b@example.org", "password": "pw", "imap_host": "imap example.org"}):
        with pytest.raises(UserInputError):
            Account.from_input(bad)
    assert "pw" not in repr(account)
    assert account.save_sent is None
    assert Account.from_input({"email": "b@example.org", "password": "pw", "save_sent": "always"}).save_sent \
        == SaveSent.ALWAYS
    # What a login saved comes back; a login saved without it follows the bridge.
    info = UserLoginInfo("L", "@b:test", "bob@example.org", "bob@example.org",
                         {**account.metadata(), "save_sent": "never"}, {"password": "pw"})
    assert Account.from_login(info).save_sent == SaveSent.NEVER
    del info.metadata["save_sent"]
    assert Account.from_login(info).save_sent is None


def test_config_section() -> None:
    cfg = EmailConfig.from_section({"enabled": True, "ghost_prefix": "email_", "initial_sync_messages": 10,
                                    "idle_timeout": 600, "sync_folders": ["INBOX"], "initial_sync_days": 30})
    assert cfg.initial_sync_days == 30 and EmailConfig().initial_sync_days == 0
    assert cfg.initial_sync_messages == 10 and cfg.idle_timeout == 600.0 and cfg.sync_folders == ("INBOX",)
    assert EmailConfig().save_sent == SaveSent.AUTO
    for given, mode in ((True, SaveSent.ALWAYS), (False, SaveSent.NEVER), ("Never", SaveSent.NEVER),
                        ("auto", SaveSent.AUTO), ("always", SaveSent.ALWAYS)):
        assert EmailConfig.from_section({"save_sent": given}).save_sent == mode
    for section, key in (({"initial_sync_messages": "ten"}, "initial_sync_messages"),
                         ({"save_sent": "sometimes"}, "save_sent"),
                         ({"save_sent": 1}, "save_sent"),
                         ({"initial_sync_days": -1}, "initial_sync_days"),
                         ({"initial_sync_days": 1.5}, "initial_sync_days"),
                         ({"idle_timeout": 3600}, "idle_timeout"),
                         ({"allow_plaintext_loopback": "yes"}, "allow_plaintext_loopback"),
                         ({"tls_ca_file": "/nonexistent.pem"}, "tls_ca_file"),
                         ({"sync_folders": []}, "sync_folders"),
                         ({"intial_sync_messages": 5}, "intial_sync_messages")):
        with pytest.raises(ConfigError) as err:
            EmailConfig.from_section(section)
        assert err.value.key == f"networks.email.{key}"
