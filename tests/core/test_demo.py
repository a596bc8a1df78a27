"""`caliopen demo`: a throwaway homeserver with the bridge; credentials that work; Ctrl-C stops all."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]


async def test_demo_prints_working_credentials_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridges", "demo", "--workdir", str(tmp_path / "demo"), "--port", "0",
        cwd=str(REPO), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    out = ""
    try:
        async with asyncio.timeout(120):
            while "Press Ctrl-C" not in out:
                line = await proc.stdout.readline()
                if not line:
                    raise AssertionError(f"demo exited early:\n{out}")
                out += line.decode(errors="replace")
        hs = re.search(r"Homeserver:\s+(http://127\.0\.0\.1:\d+)", out).group(1)
        user = re.search(r"User:\s+(@\S+)", out).group(1)
        password = re.search(r"Password:\s+(\S+)", out).group(1)
        bot = re.search(r"Bridge bot:\s+(@\S+)", out).group(1)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{hs}/_matrix/client/v3/login", json={
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                "password": password}) as r:
                assert r.status == 200, await r.text()
                token = (await r.json())["access_token"]
            async with http.get(f"{hs}/_matrix/client/v3/profile/{bot}",
                                headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200 and (await r.json()).get("displayname") == "Caliopen"
            # Double puppeting is registered: its token acts as the demo user.
            from bridges.config import Config

            puppet_token = Config.load(tmp_path / "demo" / "config.yaml")["homeserver.double_puppet_as_token"]
            async with http.get(f"{hs}/_matrix/client/v3/account/whoami", params={"user_id": user},
                                headers={"Authorization": f"Bearer {puppet_token}"}) as r:
                assert r.status == 200 and (await r.json())["user_id"] == user, await r.text()
        assert password not in (tmp_path / "demo" / "config.yaml").read_text()
        mailbox = re.search(r"address (\S+), password (\S+)\n\s+IMAP (\S+) port (\d+) \(tls\), SMTP \S+ port (\d+)", out)
        if mailbox:  # the mail sandbox runs where Dovecot and Postfix are installed (make test installs them)
            await _log_in_to_demo_mailbox(tmp_path / "demo", user, *mailbox.groups())
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
    rest = await asyncio.wait_for(proc.stdout.read(), 60)
    code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0, rest.decode(errors="replace")[-3000:]
    # Synapse is gone with it: its port no longer answers.
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(f"{hs}/_matrix/client/versions", timeout=aiohttp.ClientTimeout(total=3)):
                raise AssertionError("the demo's Synapse is still running")
        except aiohttp.ClientError:
            pass


async def _log_in_to_demo_mailbox(workdir: Path, user: str, address: str, password: str, host: str,
                                  imap_port: str, smtp_port: str) -> None:
    """The printed mailbox works: an email login with it completes (both servers are checked)."""
    from bridges.config import Config

    cfg = Config.load(workdir / "config.yaml")
    base = f"{cfg['appservice.address']}{cfg['provisioning.prefix']}/v3"
    headers = {"Authorization": f"Bearer {cfg['provisioning.shared_secret']}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{base}/login/start/email.password", params={"user_id": user}) as r:
            step = await r.json()
        values = {"email": address, "display_name": "", "imap_host": host, "imap_port": imap_port,
                  "imap_security": "tls", "smtp_host": host, "smtp_port": smtp_port, "smtp_security": "starttls",
                  "username": "", "password": password}
        async with http.post(f"{base}/login/step/{step['login_id']}/{step['step_id']}/user_input",
                             params={"user_id": user}, json=values) as r:
            done = await r.json()
    assert done.get("type") == "complete", done
