"""The management room, provisioning, and bad input against a running bridge.

Each test makes its own Matrix user and fake-network account on the session's bridge.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.conftest import unique
from tests.core.test_e2e_fake import body_has, body_is, direct, login_via_chat


async def transaction(bridge, txn_id: str, body: bytes | dict, token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    kwargs = {"json": body} if isinstance(body, dict) else {"data": body}
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{bridge.url}/_matrix/app/v1/transactions/{txn_id}", headers=headers, **kwargs) as r:
            return r.status, await r.json(content_type=None)


def bot_says(bridge, text: str):
    return lambda e: e.get("sender") == bridge.bot_mxid and text in str(e.get("content", {}).get("body", ""))


async def test_commands_and_unknown_command(bridge, nio_users):
    user = await nio_users("cmd")
    mgmt = await user.create_dm(bridge.bot_mxid)
    await user.wait_for_message(mgmt, body_has("management room"))
    await user.send_text(mgmt, "frobnicate now")
    await user.wait_for_message(mgmt, bot_says(bridge, "Unknown command 'frobnicate'"))
    await user.send_text(mgmt, "networks")
    await user.wait_for_message(mgmt, bot_says(bridge, "- fake: on"))
    await user.send_text(mgmt, "!cal version")
    await user.wait_for_message(mgmt, bot_says(bridge, "Caliopen 0."))
    await user.send_text(mgmt, "logout nothing-here")
    await user.wait_for_message(mgmt, bot_says(bridge, "You have no login nothing-here"))
    await user.send_text(mgmt, "login nonet")
    await user.wait_for_message(mgmt, bot_says(bridge, "There is no network called nonet"))


async def test_wrong_password_then_right_one(bridge, nio_users, fake_remote):
    user = await nio_users("pw")
    account = unique("pwacct")
    fake_remote.add_account(account, "right")
    mgmt = await user.create_dm(bridge.bot_mxid)
    await user.wait_for_message(mgmt, body_has("management room"))
    await user.send_text(mgmt, "login fake password")
    await user.wait_for_message(mgmt, body_has("Send your username"))
    await user.send_text(mgmt, account)
    await user.wait_for_message(mgmt, body_has("Send your password"))
    await user.send_text(mgmt, "wrong")
    await user.wait_for_message(mgmt, bot_says(bridge, "Wrong username or password"))
    await user.send_text(mgmt, account)
    await user.wait_for_message(mgmt, lambda e: len([x for x in user.events(mgmt) if "Send your password"
                                                     in str(x.get("content", {}).get("body"))]) == 2)
    await user.send_text(mgmt, "right")
    await user.wait_for_message(mgmt, body_has("Logged in to fake"))
    await user.send_text(mgmt, "logins")
    await user.wait_for_message(mgmt, bot_says(bridge, f"fake {account.title()}: CONNECTED"))


async def test_transactions_tokens_malformed_and_replay(bridge, nio_users):
    hs_token = bridge.config["appservice.hs_token"]
    assert (await transaction(bridge, "t-none", {"events": []}, None))[0] == 401
    status, body = await transaction(bridge, "t-wrong", {"events": []}, "not-the-token")
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    assert (await transaction(bridge, "t-bad", b"{not json", hs_token))[0] == 400
    assert (await transaction(bridge, "t-bad2", {"no_events": 1}, hs_token))[0] == 400

    # A forged event behind a wrong token is not processed; a replayed one is processed once.
    user = await nio_users("replay")
    mgmt = await user.create_dm(bridge.bot_mxid)
    await user.wait_for_message(mgmt, body_has("management room"))
    event = {"type": "m.room.message", "room_id": mgmt, "sender": user.user_id, "event_id": f"$replay{time.time()}",
             "origin_server_ts": int(time.time() * 1000), "content": {"msgtype": "m.text", "body": "ping"}}
    assert (await transaction(bridge, f"forged{time.time()}", {"events": [event]}, "wrong"))[0] == 403
    txn = f"replay{time.time()}"
    for _ in range(2):
        assert (await transaction(bridge, txn, {"events": [event]}, hs_token))[0] == 200
    # The same event in another transaction (a homeserver retry after a crash) is also deduplicated.
    assert (await transaction(bridge, txn + "b", {"events": [event]}, hs_token))[0] == 200
    await user.wait_for_message(mgmt, bot_says(bridge, "Pong"))
    await user.send_text(mgmt, "version")
    await user.wait_for_message(mgmt, bot_says(bridge, "Caliopen"))
    pongs = [e for e in user.events(mgmt) if bot_says(bridge, "Pong")(e)]
    assert len(pongs) == 1


async def test_provisioning_auth_and_login(bridge, fake_remote):
    user = f"@prov{unique('u')}:caliopen.localhost"
    status, body = await bridge.provision("GET", "/whoami", user, secret="wrong")
    assert status == 401
    status, body = await bridge.provision("GET", "/whoami", "@eve:elsewhere.example")
    assert status == 403
    status, flows = await bridge.provision("GET", "/login/flows", user)
    assert status == 200 and "fake.password" in [f["id"] for f in flows["flows"] if f["network"] == "fake"]
    account = unique("provacct")
    fake_remote.add_account(account, "pw")
    status, step = await bridge.provision("POST", "/login/start/fake.password", user)
    assert step["type"] == "user_input" and [f["type"] for f in step["user_input"]["fields"]] == ["username", "password"]
    status, err = await bridge.provision(
        "POST", f"/login/step/{step['login_id']}/{step['step_id']}/user_input", user,
        json={"username": account, "password": "nope"})
    assert status == 400 and "Wrong username or password" in err["error"]
    login_id = await bridge.login_fake(user, account, "pw")
    status, who = await bridge.provision("GET", "/whoami", user)
    assert [lg["id"] for lg in who["logins"]] == [login_id]
    assert who["networks"]["fake"] == {"enabled_on_server": True, "enabled_for_user": True}
    assert who["networks"]["twitter"]["enabled_on_server"] is False
    status, _ = await bridge.provision("POST", f"/logout/{login_id}", user)
    assert status == 200
    status, logins = await bridge.provision("GET", "/logins", user)
    assert logins == {"login_ids": []}


async def test_disable_network_stops_bridging_then_enable_resumes(bridge, nio_users, fake_remote):
    user = await nio_users("toggle")
    mgmt, account = await login_via_chat(user, bridge, fake_remote)
    fake_remote.push(account, "dm:dan", "dan", "before disable")
    room = await user.wait_for_invite(direct)
    await user.wait_for_message(room, body_is("before disable"))
    await user.send_text(mgmt, "disable fake")
    await user.wait_for_message(mgmt, bot_says(bridge, "fake is off for you"))
    await user.send_text(mgmt, "logins")
    await user.wait_for_message(mgmt, bot_says(bridge, "DISABLED"))
    fake_remote.push(account, "dm:dan", "dan", "while disabled")
    # A message typed in the portal meanwhile is refused with a readable notice.
    await user.send_text(room, "can you hear me")
    await user.wait_for_message(room, bot_says(bridge, "You switched fake off"))
    await asyncio.sleep(2)
    assert not [e for e in user.events(room) if body_is("while disabled")(e)]
    assert not [m for m in fake_remote.sent if m["account"] == account and m["text"] == "can you hear me"]
    await user.send_text(mgmt, "enable fake")
    await user.wait_for_message(mgmt, bot_says(bridge, "fake is on for you"))
    await user.wait_for_message(room, body_is("while disabled"), timeout=30)


async def test_send_failures_are_shown_and_retryable_ones_retried(bridge, nio_users, fake_remote):
    user = await nio_users("fail")
    mgmt, account = await login_via_chat(user, bridge, fake_remote)
    fake_remote.push(account, "dm:erin", "erin", "hello")
    room = await user.wait_for_invite(direct)
    await user.wait_for_message(room, body_is("hello"))
    fake_remote.fail_sends.append((400, False))
    await user.send_text(room, "refused message")
    notice = await user.wait_for_message(room, bot_says(bridge, "Your message was not sent: refused by the fake"))
    assert notice["content"]["msgtype"] == "m.notice"
    fake_remote.fail_sends.extend([(503, True), (503, True)])
    await user.send_text(room, "flaky message")
    await fake_remote.wait_sent(lambda m: m["account"] == account and m["text"] == "flaky message")
    assert not [m for m in fake_remote.sent if m["account"] == account and m["text"] == "refused message"]


async def test_start_chat_and_conversion_error(bridge, nio_users, fake_remote):
    user = await nio_users("start")
    mgmt, account = await login_via_chat(user, bridge, fake_remote)
    await user.send_text(mgmt, "start-chat fake frank")
    room = await user.wait_for_invite(direct)
    await user.wait_for_message(mgmt, bot_says(bridge, "Opened"))
    await user.send_text(room, "first words")
    sent = await fake_remote.wait_sent(lambda m: m["account"] == account and m["text"] == "first words")
    assert sent["conversation"] == "dm:frank"
    await user.send_text(mgmt, "start-chat fake not/valid")
    await user.wait_for_message(mgmt, bot_says(bridge, "is not a fake-network user name"))
    fake_remote.push(account, "dm:frank", "frank", "!unconvertible")
    fake_remote.push(account, "dm:frank", "frank", "after the bad one")
    await user.wait_for_message(room, body_has("could not be converted"))
    await user.wait_for_message(room, body_is("after the bad one"))


async def test_media_both_ways_and_metrics(bridge, nio_users, fake_remote):
    user = await nio_users("media")
    mgmt, account = await login_via_chat(user, bridge, fake_remote)
    blob = bytes(range(256)) * 300
    picture = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
    fake_remote.push(account, "dm:gina", "gina", "see attached", media=blob, filename="data.bin", avatar=picture)
    room = await user.wait_for_invite(direct)
    evt = await user.wait_for_message(room, lambda e: e.get("content", {}).get("msgtype") == "m.file")
    assert "file" in evt["content"] and "url" not in evt["content"]
    assert await user.download_decrypted(evt["content"]) == blob
    # The ghost has the correspondent's display name and picture.
    profile = await user._raw("GET", f"/_matrix/client/v3/profile/{evt['sender']}")
    assert profile["displayname"] == "Gina"
    assert profile["avatar_url"].startswith("mxc://")
    assert await user.download(profile["avatar_url"]) == picture
    await user.send_file(room, b"\x00matrix bytes\xff" * 100, "out.bin", "application/octet-stream")
    sent = await fake_remote.wait_sent(lambda m: m["account"] == account and m.get("filename") == "out.bin")
    import base64

    assert base64.b64decode(sent["media_b64"]) == b"\x00matrix bytes\xff" * 100
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{bridge.url}/metrics") as r:
            text = await r.text()
    assert 'caliopen_remote_messages_total{network="fake"}' in text


async def test_secrets_are_not_in_the_database_file(bridge, fake_remote):
    user = f"@sec{unique('u')}:caliopen.localhost"
    account = unique("secacct")
    password = "correct-horse-" + unique("battery")
    fake_remote.add_account(account, password)
    await bridge.login_fake(user, account, password)
    db_path = bridge.config["database.url"].removeprefix("sqlite://")
    raw = b""
    for suffix in ("", "-wal"):
        try:
            with open(db_path + suffix, "rb") as f:
                raw += f.read()
        except FileNotFoundError:
            pass
    assert account.encode() in raw  # the login is there...
    assert password.encode() not in raw  # ...but not its password
    assert password not in bridge.log_text()


async def test_a_ghost_removed_from_its_room_is_joined_again(bridge, nio_users, fake_remote):
    """The bridge remembers which ghosts are in which rooms; a removal (seen in a transaction or
    as the homeserver refusing the message) makes it join the ghost again, and nothing is lost."""
    user = await nio_users("kick")
    mgmt, account = await login_via_chat(user, bridge, fake_remote)
    fake_remote.push(account, "dm:hugo", "hugo", "before the kick")
    room = await user.wait_for_invite(direct)
    first = await user.wait_for_message(room, body_is("before the kick"))
    ghost = first["sender"]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bridge.config['homeserver.address']}/_matrix/client/v3/rooms/{room}/kick",
                             params={"user_id": bridge.bot_mxid}, json={"user_id": ghost, "reason": "test"},
                             headers={"Authorization": f"Bearer {bridge.config['appservice.as_token']}"}) as r:
            assert r.status == 200, await r.text()
    await user.wait_for_member(room, ghost, "leave")
    fake_remote.push(account, "dm:hugo", "hugo", "after the kick")
    after = await user.wait_for_message(room, body_is("after the kick"))
    assert after["sender"] == ghost
    await user.wait_for_member(room, ghost, "join")
