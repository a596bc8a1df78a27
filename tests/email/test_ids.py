"""Addresses, portal IDs and message remote IDs of the email bridge."""

from __future__ import annotations

import pytest

from bridges.core.errors import UserInputError
from bridges.email.ids import (
    MAX_ID_LENGTH,
    SELF_PORTAL_ID,
    message_remote_id,
    normalize_address,
    normalize_list_id,
    normalize_message_id,
    parse_message_ids,
    portal_id_for,
)


@pytest.mark.parametrize(
    "given, expected",
    [
        ("alice@example.org", "alice@example.org"),
        ("  Alice@Example.ORG ", "alice@example.org"),
        ("Alice Martin <Alice.Martin@Example.org>", "alice.martin@example.org"),
        ('"Martin, Alice" <alice@example.org>', "alice@example.org"),
        ("alice@example.org (Alice)", "alice@example.org"),
        ("mailto:Alice@example.org?subject=hi", "alice@example.org"),
        ("bob+tag@sub.example.co.uk", "bob+tag@sub.example.co.uk"),
        ("zoé@bücher.example", "zoé@xn--bcher-kva.example"),
        ("info@例え.jp", "info@xn--r8jz45g.jp"),
        ("user@example.org.", "user@example.org"),
        ('"john doe"@example.org', '"john doe"@example.org'),
        ("root@[192.0.2.1]", "root@[192.0.2.1]"),
    ],
)
def test_normalize_address(given: str, expected: str) -> None:
    assert normalize_address(given) == expected


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "alice", "@example.org", "alice@", "alice@@example.org", "a b@example.org",
     "alice@exa mple.org", "alice@-bad-.org", "alice@example..org", "alice@example.org, bob@example.org",
     "Alice <>", "alice..x@example.org", "alice@" + "a" * 64 + ".org"],
)
def test_normalize_address_rejects(bad: str) -> None:
    with pytest.raises(UserInputError):
        normalize_address(bad)


def test_normalize_address_error_is_readable() -> None:
    with pytest.raises(UserInputError) as info:
        normalize_address("not an address")
    assert "not an address" in info.value.user_message


def test_portal_id_is_a_set_of_correspondents() -> None:
    one = portal_id_for(["Bob@Example.org", "alice@example.org"])
    assert one == portal_id_for(["alice@example.org", "bob@example.org"])
    assert one == portal_id_for(["Alice <ALICE@example.org>", "bob@example.org", "bob@example.org"])
    assert one == "alice@example.org,bob@example.org"
    assert portal_id_for(["alice@example.org"]) == "alice@example.org"
    assert portal_id_for(["alice@example.org"]) != one
    assert portal_id_for(iter(["x@example.org"])) == "x@example.org"


def test_portal_id_for_mailing_list_ignores_senders() -> None:
    a = portal_id_for(["alice@example.org"], "Developers <dev.lists.example.org>")
    b = portal_id_for(["bob@example.org", "carol@example.org"], "<DEV.lists.example.org>")
    assert a == b == "list:dev.lists.example.org"
    assert a != portal_id_for(["alice@example.org"])
    assert portal_id_for(["alice@example.org"], "   ") == "alice@example.org"


def test_portal_id_hashes_long_sets_stably() -> None:
    people = [f"person{i}@a-rather-long-domain-name.example" for i in range(40)]
    pid = portal_id_for(people)
    assert pid.startswith("group:")
    assert len(pid) <= MAX_ID_LENGTH
    assert pid == portal_id_for(reversed([p.upper() for p in people]))
    assert pid != portal_id_for(people[:-1])
    long_list = "x" * 300 + ".lists.example"
    assert portal_id_for([], long_list).startswith("list:")
    assert len(portal_id_for([], long_list)) <= MAX_ID_LENGTH


def test_portal_id_of_odd_input() -> None:
    assert portal_id_for([]) == SELF_PORTAL_ID
    assert portal_id_for(["", ""]) == SELF_PORTAL_ID
    # Not an address: still one stable room for it rather than an error in the sync.
    assert portal_id_for(["Undisclosed Recipients"]) == portal_id_for(["undisclosed  recipients"])
    # An address that contains a comma cannot be joined with commas: it is hashed.
    assert portal_id_for(['"a,b"@example.org', "c@example.org"]).startswith("group:")


def test_normalize_list_id() -> None:
    assert normalize_list_id("Python Dev <Python-Dev.python.org>") == "python-dev.python.org"
    assert normalize_list_id("announce.example.org") == "announce.example.org"
    assert normalize_list_id("  ") is None


def test_message_ids() -> None:
    assert normalize_message_id("<abc@example.org>") == "abc@example.org"
    assert normalize_message_id("  <abc@example.org>\r\n") == "abc@example.org"
    assert normalize_message_id("abc@example.org") == "abc@example.org"
    assert normalize_message_id("<a b@example.org>") == "ab@example.org"
    assert normalize_message_id("<>") is None
    assert normalize_message_id("") is None
    assert normalize_message_id(None) is None
    long = "<" + "x" * 500 + "@example.org>"
    hashed = normalize_message_id(long)
    assert hashed is not None and hashed.startswith("mid:") and len(hashed) <= MAX_ID_LENGTH
    assert hashed == normalize_message_id(long.strip("<>"))
    assert parse_message_ids("<a@x> <b@x>\r\n <a@x> (comment) <c@x>") == ["a@x", "b@x", "c@x"]
    assert parse_message_ids("a@x, b@x") == ["a@x", "b@x"]
    assert parse_message_ids("") == []
    assert parse_message_ids(None) == []


def test_message_remote_id() -> None:
    assert message_remote_id("<m1@example.org>", "INBOX", 7, 42) == "m1@example.org"
    assert message_remote_id("<m1@example.org>", "Sent", 9, 1) == "m1@example.org"
    synthetic = message_remote_id(None, "INBOX", 7, 42)
    assert synthetic == "imap:INBOX:7:42"
    assert synthetic != message_remote_id(None, "INBOX", 8, 42)
    raw = b"From: a@b\r\n\r\nno message id\r\n"
    by_content = message_remote_id("", "INBOX", 7, 42, raw=raw)
    assert by_content.startswith("sha256:")
    assert by_content == message_remote_id(None, "Archive", 99, 1, raw=raw)  # same mail, other folder
    assert by_content != message_remote_id(None, "INBOX", 7, 42, raw=raw + b"x")
    assert len(message_remote_id(None, "F" * 500, 1, 1)) <= MAX_ID_LENGTH
