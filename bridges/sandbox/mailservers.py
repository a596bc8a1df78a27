"""Real mail servers on loopback for the demo and the tests: Dovecot, Postfix and an SMTP sink.

:class:`MailServers` starts, in one temporary directory of its own:

- **Dovecot** (Debian's 2.3): IMAP on a plain port (STARTTLS offered) and an implicit-TLS
  port, both with IDLE, CONDSTORE, QRESYNC and SPECIAL-USE (Sent, Drafts, Trash, Junk); a
  passwd-file per user, so that :meth:`MailServers.add_user` takes effect at once; Maildirs under
  the temporary directory; LMTP on a loopback port; an auth socket for Postfix.
- **Postfix** (Debian's 3.7): an inbound smtpd (port 25's role), a submission smtpd
  (STARTTLS required, SASL through Dovecot) and an implicit-TLS one (port 465's role). Mail for :attr:`MailServers.domain` goes over LMTP
  into Dovecot; every other domain is relayed to the sink.
- **the sink** (aiosmtpd in a thread): records what Postfix relays to it
  (:attr:`MailServers.sink`) and fails on purpose: ``reject-*@…`` recipients get a 550,
  ``defer-*@…`` a 450. Submission verifies ``reject-*`` and ``defer-*`` recipients against the
  sink while the client waits, so a client sees that 550 (or a 450) at RCPT time, as a provider
  that checks recipients would answer.

TLS uses a self-signed certificate made here (:attr:`MailServers.ca_file`,
:meth:`MailServers.ssl_context`). Everything runs as root (Dovecot and Postfix drop to their
Debian system users). Postfix's ``master`` is started directly with ``-c`` (the ``postfix``
command would insist that ``/etc/postfix/main.cf`` list the directory in
``alternate_config_directories``, and would spend seconds on checks); its queue directories
are made here as ``post-install`` would make them. Nothing outside the temporary directory is
written, so test sessions can run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import itertools
import logging
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from imapclient import IMAPClient

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_counter = itertools.count(1)


class MailServerError(RuntimeError):
    """A mail server failed to start or refused a helper's request."""


def free_port(host: str = HOST) -> int:
    """A TCP port free on ``host`` right now (binds port 0 and closes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    while True:
        if proc is not None and proc.poll() is not None:
            raise MailServerError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise MailServerError(f"port {port} did not open in time") from None
            time.sleep(0.02)


def make_certificate(directory: Path, hostnames: Iterable[str]) -> tuple[Path, Path]:
    """Write a self-signed certificate for ``hostnames`` and 127.0.0.1; return (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = list(hostnames)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address(HOST)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# --- The sink ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkMessage:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Sink:
    """An SMTP server (aiosmtpd, in a thread) that stands for every other domain's MX.

    ``reject-*`` recipients get ``550 5.1.1``, ``defer-*`` ones ``450 4.2.0``; everything else
    is accepted and recorded in :attr:`messages`.
    """

    port: int = 0
    messages: list[SinkMessage] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    async def handle_RCPT(  # noqa: N802 (aiosmtpd hook name)
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject-"):
            with self._lock:
                self.refused.append(address)
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in this test"
        if local.startswith("defer-"):
            return f"450 4.2.0 <{address}>: Recipient address temporarily unavailable"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(  # noqa: N802 (aiosmtpd hook name)
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        with self._lock:
            self.messages.append(SinkMessage(str(envelope.mail_from), tuple(envelope.rcpt_tos), bytes(raw)))
        return "250 2.0.0 OK: recorded"

    def start(self) -> None:
        self.port = free_port()
        self._controller = Controller(self, hostname=HOST, port=self.port, data_size_limit=None)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def for_recipient(self, address: str) -> list[SinkMessage]:
        """Messages recorded so far with ``address`` among their envelope recipients."""
        address = address.lower()
        with self._lock:
            return [m for m in self.messages if address in (r.lower() for r in m.rcpt_tos)]

    async def wait_for(self, address: str, count: int = 1, timeout: float = 30.0) -> list[SinkMessage]:
        """Wait until ``count`` messages reached ``address``; return them. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.for_recipient(address)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} messages for {address} reached the sink")
            await asyncio.sleep(0.05)


# --- Dovecot and Postfix -------------------------------------------------------------------


def _dovecot_conf(m: MailServers) -> str:
    d = m.root / "dovecot"
    return f"""\
# Written by tests/rig/mailservers.py for one test session.
protocols = imap lmtp
listen = {HOST}
base_dir = {d}/run
state_dir = {d}/state
log_path = {m.root}/dovecot.log
info_log_path = {m.root}/dovecot.log
instance_name = caliopen-test-{m.instance}
shutdown_clients = yes
first_valid_uid = 1
last_valid_uid = 0
first_valid_gid = 1
mail_uid = mail
mail_gid = mail
mail_location = maildir:{m.root}/mail/%d/%n
mail_fsync = never
# IDLE learns of changes through inotify; every Dovecot of the machine runs as the same user,
# whose inotify instances are few (128): check at least every second when they run out.
mailbox_idle_check_interval = 1 secs
ssl = yes
ssl_cert = <{m.cert_file}
ssl_key = <{m.key_file}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = 0
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
imap_capability = {m.imap_capability}
mail_max_userip_connections = 200
lmtp_save_to_detail_mailbox = no
recipient_delimiter =
postmaster_address = postmaster@{m.domain}
hostname = mx.{m.domain}

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {m.users_dir}/%Lu
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {m.users_dir}/%Lu
  default_fields = uid=mail gid=mail home={m.root}/mail/%d/%n
}}

namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
}}

service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {m.imap_port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {m.imaps_port}
    ssl = yes
  }}
  process_min_avail = 1
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {HOST}
    port = {m.lmtp_port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
service imap {{
  process_limit = 500
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol imap {{
  mail_max_userip_connections = 200
}}
"""


def _postfix_main(m: MailServers) -> str:
    p = m.root / "postfix"
    return f"""\
# Written by tests/rig/mailservers.py for one test session.
compatibility_level = 3.6
queue_directory = {p}/spool
data_directory = {p}/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {m.root}/postfix.log
maillog_file_prefixes = {m.root}
myhostname = mx.{m.domain}
mydomain = {m.domain}
myorigin = $mydomain
mydestination =
local_recipient_maps =
local_transport = error:no local delivery here
alias_maps =
alias_database =
inet_interfaces = {HOST}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = {m.domain}
relay_recipient_maps =
transport_maps = inline:{{ {{{m.domain} = lmtp:inet:{HOST}:{m.lmtp_port}}} }}
relayhost = [{HOST}]:{m.sink.port}
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_peername_lookup = no
smtpd_tls_cert_file = {m.cert_file}
smtpd_tls_key_file = {m.key_file}
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = {m.root}/dovecot/run/auth-postfix
smtpd_sasl_security_options = noanonymous
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
address_verify_map =
address_verify_poll_delay = 1s
unverified_recipient_reject_code = 550
address_verify_sender = <>
message_size_limit = {m.message_size_limit}
mailbox_size_limit = 0
biff = no
append_dot_mydomain = no
smtputf8_enable = yes
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
delay_warning_time = 0
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_client_connection_rate_limit = 0
default_process_limit = 50
"""


def _postfix_master(m: MailServers) -> str:
    return f"""\
# service type private unpriv chroot wakeup maxproc command
{HOST}:{m.smtp_port} inet n - n - - smtpd
{HOST}:{m.submission_port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
  -o mynetworks=
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_recipient_restrictions=check_recipient_access,regexp:{m.root}/postfix/etc/verify_recipients
{HOST}:{m.submissions_port} inet n - n - - smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
  -o mynetworks=
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_recipient_restrictions=check_recipient_access,regexp:{m.root}/postfix/etc/verify_recipients
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
lmtp unix - - n - - lmtp
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


# Dovecot 2.3's post-login capabilities (imap_capability replaces them when not "+...").
_DOVECOT_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
    "STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE"
)

# What `post-install create-missing` makes in the queue directory (see postfix-files).
_QUEUE_DIRS = [
    *(
        (name, "root", 0o700)
        for name in (
            "active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming",
            "private", "saved", "trace",
        )
    ),
    ("maildrop", "postdrop", 0o730),
    ("public", "postdrop", 0o710),
    ("pid", "root", 0o755),
]


class MailServers:
    """Dovecot + Postfix + sink for one test session. See the module docstring.

    Args:
        domain: the mail domain the servers host (users are ``localpart@domain``).
        message_size_limit: Postfix's limit in bytes (bigger messages get ``552`` at submission).
        advertise_idle: False makes Dovecot leave IDLE out of its capabilities (to test
            clients that fall back to polling).
    """

    def __init__(
        self,
        *,
        domain: str = "mail.test",
        message_size_limit: int = 10 * 1024 * 1024,
        advertise_idle: bool = True,
    ) -> None:
        self.domain = domain
        self.advertise_idle = advertise_idle
        self.message_size_limit = message_size_limit
        self.host = HOST
        self.instance = f"{os.getpid()}-{next(_counter)}"
        self.root = Path(tempfile.mkdtemp(prefix="caliopen-mail-"))
        self.root.chmod(0o755)
        self.users_dir = self.root / "dovecot" / "users"
        self.cert_file = self.root / "cert.pem"
        self.key_file = self.root / "key.pem"
        self.imap_port = 0
        self.imaps_port = 0
        self.lmtp_port = 0
        self.smtp_port = 0
        self.submission_port = 0
        self.submissions_port = 0
        self.sink = Sink()
        self.passwords: dict[str, str] = {}
        self._users_lock = threading.Lock()
        self._dovecot: subprocess.Popen[bytes] | None = None
        self._postfix: subprocess.Popen[bytes] | None = None
        self._postfix_etc = self.root / "postfix" / "etc"

    # --- life cycle ----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Write the configs and start the sink, Dovecot and Postfix; return once they listen.

        Raises MailServerError (with the servers' log tails) when one does not come up.
        """
        deadline = time.monotonic() + timeout
        try:
            self.imap_port, self.imaps_port, self.lmtp_port = free_port(), free_port(), free_port()
            self.smtp_port, self.submission_port, self.submissions_port = free_port(), free_port(), free_port()
            make_certificate(self.root, [f"mx.{self.domain}", "localhost"])
            self.sink.start()
            self._start_dovecot()
            self._start_postfix()
            for port in (self.imap_port, self.imaps_port, self.lmtp_port):
                _wait_port(port, deadline, self._dovecot)
            for port in (self.smtp_port, self.submission_port, self.submissions_port):
                _wait_port(port, deadline, self._postfix)
        except Exception as e:
            logs = self.log_tail()
            self.stop()
            raise MailServerError(f"{e}\n{logs}") from e

    def _start_dovecot(self) -> None:
        d = self.root / "dovecot"
        (d / "run").mkdir(parents=True)
        (d / "state").mkdir()
        self.users_dir.mkdir()
        (self.root / "mail").mkdir()
        shutil.chown(self.root / "mail", "mail", "mail")
        conf = d / "dovecot.conf"
        conf.write_text(_dovecot_conf(self))
        self._dovecot = subprocess.Popen(
            ["/usr/sbin/dovecot", "-F", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=open(self.root / "dovecot.out", "wb"),  # noqa: SIM115 (owned by the child)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _start_postfix(self) -> None:
        p = self.root / "postfix"
        etc = self._postfix_etc
        etc.mkdir(parents=True)
        (p / "spool").mkdir()
        (p / "data").mkdir()
        (etc / "main.cf").write_text(_postfix_main(self))
        (etc / "master.cf").write_text(_postfix_master(self))
        (etc / "verify_recipients").write_text("/^(reject|defer)-/ reject_unverified_recipient\n")
        # Postfix waits for a config file written in the last second to settle: backdate them.
        past = time.time() - 10
        for conf in etc.iterdir():
            os.utime(conf, (past, past))
        spool = p / "spool"
        for name, group, mode in _QUEUE_DIRS:
            path = spool / name
            path.mkdir()
            shutil.chown(path, "root" if name == "pid" else "postfix", group)
            path.chmod(mode)
        shutil.chown(p / "data", "postfix", "postfix")
        (p / "data").chmod(0o700)
        self._postfix = subprocess.Popen(
            ["/usr/lib/postfix/sbin/master", "-c", str(etc), "-d", "-s"],
            stdin=subprocess.DEVNULL,
            stdout=open(self.root / "postfix.out", "wb"),  # noqa: SIM115 (owned by the child)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        """Stop Postfix, Dovecot and the sink, and delete the temporary directory."""
        procs = [p for p in (self._postfix, self._dovecot) if p is not None]
        for proc in procs:  # both take about a second to wind down: in parallel
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(3)
            # Each server runs in a session of its own: end whatever of it is left (a Dovecot
            # login process stopped while it starts waits 5 s for a stats handshake).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        self._postfix = self._dovecot = None
        self.sink.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def imap_capability(self) -> str:
        if self.advertise_idle:
            return "+SPECIAL-USE"
        return " ".join(c for c in _DOVECOT_CAPABILITIES.split() if c != "IDLE")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of each server's log, for failure messages."""
        out = []
        for name in ("dovecot.log", "dovecot.out", "postfix.log", "postfix.out"):
            path = self.root / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(out)

    # --- TLS -----------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        """The self-signed certificate both servers present (PEM), to trust it in clients."""
        return self.cert_file

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the servers' certificate (and checks the hostname)."""
        return ssl.create_default_context(cafile=str(self.cert_file))

    # --- users and mail ------------------------------------------------------------------

    def add_user(self, localpart: str, password: str | None = None) -> str:
        """Create a mailbox user (usable at once) and return its address."""
        address = f"{localpart}@{self.domain}".lower()
        password = password or f"pw-{localpart}-{os.urandom(4).hex()}"
        if ":" in password or "\n" in password:
            raise ValueError("passwords in the passwd-file cannot hold ':' or newlines")
        with self._users_lock:
            if address in self.passwords:
                raise ValueError(f"user {address} exists")
            self.passwords[address] = password
            # One passwd-file per user: Dovecot rereads a file at most once a second, but
            # opens a file it has not seen yet at once.
            (self.users_dir / address).write_text(f"{address}:{{PLAIN}}{password}::::::\n")
        return address

    def password(self, address: str) -> str:
        return self.passwords[address.lower()]

    def deliver(self, raw: bytes, to_addr: str, mail_from: str = "sender@example.org") -> None:
        """Deliver ``raw`` into a local mailbox over LMTP. Raises MailServerError if refused."""
        try:
            with smtplib.LMTP(HOST, self.lmtp_port, timeout=30) as lmtp:
                refused = lmtp.sendmail(mail_from, [to_addr], raw)
        except smtplib.SMTPException as e:
            raise MailServerError(f"LMTP delivery to {to_addr} failed: {e}") from e
        if refused:
            raise MailServerError(f"LMTP refused {to_addr}: {refused}")

    def send_inbound(self, raw: bytes, to_addrs: list[str], mail_from: str = "sender@example.org") -> None:
        """Hand ``raw`` to Postfix's inbound smtpd (as another MX would); it queues and delivers."""
        with smtplib.SMTP(HOST, self.smtp_port, timeout=30) as smtp:
            smtp.sendmail(mail_from, to_addrs, raw)

    def imap(self, address: str) -> IMAPClient:
        """A logged-in imapclient connection for ``address`` (plain loopback port); close it."""
        client = IMAPClient(HOST, port=self.imap_port, ssl=False, timeout=30)
        client.login(address, self.password(address))
        return client

    def append(
        self,
        address: str,
        folder: str,
        raw: bytes,
        flags: Iterable[str] = (),
        when: dt.datetime | None = None,
    ) -> int | None:
        """APPEND ``raw`` to ``folder`` of ``address``; return its UID (UIDPLUS) if given."""
        client = self.imap(address)
        try:
            result = client.append(folder, raw, flags=tuple(flags), msg_time=when)
        finally:
            with contextlib.suppress(Exception):
                client.logout()
        m = re.search(rb"APPENDUID \d+ (\d+)", result if isinstance(result, bytes) else b"")
        return int(m.group(1)) if m else None

    def append_many(self, address: str, folder: str, raws: Iterable[bytes | tuple[bytes, dt.datetime]]) -> int:
        """APPEND many messages over one connection (each raw, or (raw, arrival time)); returns
        how many."""
        client = self.imap(address)
        count = 0
        try:
            for item in raws:
                raw, when = item if isinstance(item, tuple) else (item, None)
                client.append(folder, raw, msg_time=when)
                count += 1
        finally:
            with contextlib.suppress(Exception):
                client.logout()
        return count

    def fetch_all(self, address: str, folder: str = "INBOX") -> list[tuple[int, set[bytes], bytes]]:
        """Every message in ``folder`` as (uid, flags, raw), without setting \\Seen."""
        client = self.imap(address)
        try:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            data = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"]) if uids else {}
        finally:
            with contextlib.suppress(Exception):
                client.logout()
        return [(uid, set(data[uid][b"FLAGS"]), data[uid][b"BODY[]"]) for uid in sorted(data)]

    async def wait_for_mail(
        self, address: str, folder: str = "INBOX", count: int = 1, timeout: float = 30.0
    ) -> list[tuple[int, set[bytes], bytes]]:
        """Wait until ``folder`` holds at least ``count`` messages; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            found = await asyncio.to_thread(self.fetch_all, address, folder)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} messages in {address}/{folder}\n{self.log_tail()}")
            await asyncio.sleep(0.1)


def simple_message(
    *,
    from_addr: str,
    to: str | list[str],
    subject: str = "Hello",
    body: str = "Hello there.\n",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: list[str] | None = None,
    cc: list[str] | None = None,
    date: dt.datetime | None = None,
    list_id: str | None = None,
) -> bytes:
    """A small, well-formed text/plain email as bytes, for tests."""
    from email.utils import format_datetime, make_msgid

    msg = EmailMessage()
    msg["From"] = from_addr
    msg["To"] = ", ".join(to) if isinstance(to, list) else to
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or dt.datetime.now(dt.timezone.utc))
    msg["Message-ID"] = message_id or make_msgid(domain="example.org")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    if list_id:
        msg["List-Id"] = list_id
    msg.set_content(body)
    return msg.as_bytes()
