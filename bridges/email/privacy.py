"""What is known of the privacy of one received mail: the ``org.caliopen.privacy`` block.

:func:`analyse` reads a raw message and reports, like the original Caliopen's privacy index:

- **transport**: each ``Received:`` hop (from, by, with, and whether it was encrypted with TLS,
  from ``with ESMTPS``/``ESMTPSA``/``LMTPS``, ``(version=TLS1_3 cipher=…)``, ``(using TLSv1.3
  with cipher …)``, Exim's ``tls …``, Microsoft's ``(version=TLS1_2, cipher=…)``), how many
  hops there were, how many of them crossed a network (external) and how many of those were
  encrypted;
- **authentication**: the receiving provider's ``Authentication-Results`` (SPF, DKIM, DMARC);
- **dkim**: the bridge's own verification of the DKIM signatures (dkimpy) when a DNS
  resolver is given, and only then: nothing here touches the network by itself;
- **e2e**: PGP/MIME, inline PGP and S/MIME encryption and signatures (detected, not
  verified: the bridge has no keys);
- a **level** (``end_to_end``, ``transport``, ``partial``, ``none``, ``unknown``) and a
  **score** from 0 to 100: up to 40 for encrypted transport (the share of external hops
  under TLS), up to 30 for authenticity (DKIM 15, DMARC 10, SPF 5), up to 30 for end-to-end
  protection (encrypted 20, signed 10).

All functions are pure except the resolver made by :func:`dns_txt_resolver`, which queries
DNS; none of them raises on malformed mail.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any

import dkim

from .convert_headers import PARSER, POLICY
from .convert_mime import part_info, payload_bytes

__all__ = ["DnsResolver", "analyse", "dns_txt_resolver", "parse_authentication_results", "parse_received"]

log = logging.getLogger("caliopen.email.privacy")

#: A DNS TXT lookup: the query name (``selector._domainkey.domain.``) in, the record out.
DnsResolver = Callable[[bytes], "bytes | None"]

VERSION = 1
_MAX_HOPS = 30
_MAX_FIELD = 200


def _short(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.split())
    return value[:_MAX_FIELD] if value else None


# --- Received ---------------------------------------------------------------------------------

_COMMENT = re.compile(r"\((?:[^()\\]|\\.|\((?:[^()\\]|\\.)*\))*\)")
_CLAUSE = re.compile(r"(?:^|\s)(from|by|via|with|id|for)\s+", re.IGNORECASE)
_TLS_PROTOCOL = re.compile(r"^(e?smtps|esmtpsa|lmtps|lmtpsa|utf8smtps|utf8smtpsa|utf8lmtps|utf8lmtpsa|https|imaps|pop3s)$", re.I)
_TLS_VERSION = re.compile(
    r"\b(?:version\s*=\s*|using\s+|\()?(TLS\s*v?1[._]?[0-3]|TLSv?1(?:\.[0-3])?|TLS1_[0-3]|SSLv3)\b", re.IGNORECASE
)
_CIPHER = re.compile(
    r"(?:cipher\s*[=:]?\s*|with\s+cipher\s+|\btls\s+)([A-Z0-9_-]{6,80})", re.IGNORECASE
)
_TLS_WORDS = re.compile(r"\b(TLS|over\s+TLS\s+secured\s+channel|STARTTLS)\b", re.IGNORECASE)
_IP = re.compile(r"\[?(?:IPv6:)?([0-9a-fA-F:.]{3,45})\]?")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "127.0.0.1", "::1", "local"}
_INTERNAL_PROTOCOLS = {"local", "lmtp", "lmtpa", "lmtps", "lmtpsa", "utf8lmtp", "utf8lmtps", "qmqp", "internal"}


def _norm_tls_version(v: str) -> str:
    digits = re.sub(r"[^0-9]", "", v.upper().replace("SSLV3", "SSL3"))
    if v.upper().startswith("SSL"):
        return "SSLv3"
    if len(digits) >= 2:
        return f"TLSv{digits[0]}.{digits[1]}"
    return "TLSv1.0" if digits == "1" else "TLS"


def _ips(text: str) -> list[str]:
    out = []
    for m in re.finditer(r"\[(?:IPv6:)?([0-9a-fA-F:.]+)\]|\b(\d{1,3}(?:\.\d{1,3}){3})\b", text):
        candidate = m.group(1) or m.group(2)
        try:
            out.append(str(ipaddress.ip_address(candidate)))
        except ValueError:
            continue
    return out


# Addresses that do not cross the internet: loopback, RFC 1918, shared (CGNAT), link-local, ULA.
# (ipaddress's is_private also covers documentation and other reserved ranges: not these.)
_INTERNAL_NETS = [ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "::1/128", "fc00::/7", "fe80::/10",
)]


def _is_internal_ip(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in _INTERNAL_NETS)


def parse_received(value: str) -> dict[str, Any]:
    """Parse one ``Received:`` header value into ``{"from", "from_ip", "by", "with", "tls",
    "tls_version", "cipher", "internal", "date_ms"}``.

    ``tls`` is ``True`` when the hop says it used TLS, ``False`` when it names a protocol
    without it (``SMTP``, ``ESMTP``, ``ESMTPA``, ``LMTP``, ``HTTP``…), ``None`` when it cannot
    tell. ``internal`` is ``True`` for hops that stay on one machine or a private network
    (loopback or private addresses, local or LMTP delivery). Pure; never raises."""
    text = " ".join(value.replace("\x00", "").split())
    main, _, date_part = text.rpartition(";") if ";" in text else (text, "", "")
    comments = " ".join(m.group(0) for m in _COMMENT.finditer(main))
    bare = _COMMENT.sub(" ", main)
    clauses: dict[str, str] = {}
    matches = list(_CLAUSE.finditer(" " + bare))
    for i, m in enumerate(matches):
        key = m.group(1).lower()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(bare) + 1
        if key not in clauses:
            clauses[key] = (" " + bare)[m.end() : end].strip()
    protocol = (clauses.get("with") or "").split(" ")[0] or None
    hop: dict[str, Any] = {
        "from": _short(clauses.get("from", "").split(" ")[0] or None),
        "from_ip": None,
        "by": _short(clauses.get("by", "").split(" ")[0] or None),
        "with": _short(clauses.get("with") or None),
        "tls": None,
        "tls_version": None,
        "cipher": None,
        "internal": False,
        "date_ms": None,
    }
    # The from clause's comment holds the connecting address: "from a.example (a.example [192.0.2.1])".
    from_comment_ips = _ips(text.split(" by ", 1)[0]) if "from" in clauses else []
    if from_comment_ips:
        hop["from_ip"] = from_comment_ips[-1]
    version = _TLS_VERSION.search(comments + " " + (clauses.get("with") or ""))
    cipher = _CIPHER.search(comments + " " + (clauses.get("with") or ""))
    if protocol and _TLS_PROTOCOL.match(protocol):
        hop["tls"] = True
    elif version or re.search(r"\bcipher\s*=", comments, re.I):
        hop["tls"] = True
    elif _TLS_WORDS.search(comments) and not re.search(r"\bno\s+TLS\b|\bTLS\s*=\s*no", comments, re.I):
        hop["tls"] = True
    elif protocol and protocol.lower() in {"smtp", "esmtp", "esmtpa", "lmtp", "lmtpa", "utf8smtp", "utf8smtpa", "http", "local", "qmqp"}:
        hop["tls"] = False
    if version:
        hop["tls_version"] = _norm_tls_version(version.group(1))
    if cipher and hop["tls"]:
        hop["cipher"] = _short(cipher.group(1))
    from_host = (hop["from"] or "").lower().strip("[]")
    by_host = (hop["by"] or "").lower()
    ips = [hop["from_ip"]] if hop["from_ip"] else []
    if (
        (protocol or "").lower() in _INTERNAL_PROTOCOLS
        or from_host in _LOCAL_NAMES
        or (ips and all(_is_internal_ip(ip) for ip in ips))
        or (not from_host and not ips)
        or (from_host and from_host == by_host)
    ):
        hop["internal"] = True
    if date_part.strip():
        try:
            dt = parsedate_to_datetime(date_part.strip())
            hop["date_ms"] = int(dt.timestamp() * 1000)
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return hop


# --- Authentication-Results -------------------------------------------------------------------


def parse_authentication_results(value: str) -> dict[str, Any]:
    """Parse one ``Authentication-Results`` header (RFC 8601) into ``{"authserv_id", "spf",
    "dkim", "dmarc", "arc", "methods": [{"method", "result", "props"}]}``; each of ``spf``,
    ``dkim``, ``dmarc``, ``arc`` is the result of that method (for DKIM, ``pass`` when any
    signature passed), or ``None`` when absent. Pure; never raises."""
    text = " ".join(_COMMENT.sub(" ", value.replace("\x00", "")).split())
    pieces = [p.strip() for p in text.split(";")]
    authserv = pieces[0].split(" ")[0] if pieces and pieces[0] else None
    methods: list[dict[str, Any]] = []
    for piece in pieces[1:]:
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*=\s*([A-Za-z0-9_-]+)(.*)$", piece)
        if not m:
            continue
        props = dict(
            (k.lower(), v.strip('"'))
            for k, v in re.findall(r"([A-Za-z0-9_-]+\.[A-Za-z0-9_.-]+)\s*=\s*(\"[^\"]*\"|\S+)", m.group(3))
        )
        methods.append({"method": m.group(1).lower(), "result": m.group(2).lower(), "props": props})
    summary: dict[str, Any] = {"authserv_id": _short(authserv), "methods": methods[:20]}
    for name in ("spf", "dkim", "dmarc", "arc"):
        results = [m["result"] for m in methods if m["method"] == name]
        if not results:
            summary[name] = None
        elif name == "dkim" and "pass" in results:
            summary[name] = "pass"
        else:
            summary[name] = results[0]
    return summary


# --- DKIM -------------------------------------------------------------------------------------


def _dkim_domains(msg: Message) -> list[dict[str, str | None]]:
    out = []
    for value in _raw_values(msg, "dkim-signature"):
        text = "".join(value.split())
        tags = dict(t.split("=", 1) for t in text.split(";") if "=" in t)
        out.append({"domain": tags.get("d", "").lower() or None, "selector": tags.get("s") or None})
    return out


def _aligned(sig_domain: str | None, from_domain: str | None) -> bool:
    if not sig_domain or not from_domain:
        return False
    return from_domain == sig_domain or from_domain.endswith("." + sig_domain)


def _verify_dkim(raw: bytes, msg: Message, resolver: DnsResolver, from_domain: str | None) -> dict[str, Any]:
    signatures = _dkim_domains(msg)
    results = []
    # dkimpy parses header lines strictly; a leading mbox "From " line is fine, CRLF or LF both are.
    for idx, sig in enumerate(signatures[:8]):
        lookups: list[str] = []

        def dnsfunc(name: bytes, timeout: float = 5, _lookups: list[str] = lookups) -> bytes | None:
            try:
                answer = resolver(name)
            except Exception:
                _lookups.append("error")
                raise dkim.DnsTimeoutError("DNS lookup failed") from None
            _lookups.append("found" if answer else "missing")
            return answer

        reason = None
        try:
            ok = dkim.DKIM(raw, minkey=1024, timeout=5).verify(idx=idx, dnsfunc=dnsfunc)
            result = "pass" if ok else "fail"
        except dkim.ValidationError as e:  # the signature does not match the message
            result, reason = "fail", _short(str(e).split(" (")[0])
        except dkim.DnsTimeoutError:
            result = "temperror"
        except dkim.DKIMException as e:  # malformed signature, unusable key
            result, reason = "permerror", _short(str(e))
        except Exception as e:  # dkimpy on mail it did not expect
            result, reason = "permerror", type(e).__name__
        if result != "pass" and lookups[-1:] == ["error"]:
            result, reason = "temperror", "DNS lookup failed"
        elif result != "pass" and lookups[-1:] == ["missing"]:
            result, reason = "permerror", "no key for the signature in DNS"
        entry: dict[str, Any] = {**sig, "result": result, "aligned": _aligned(sig["domain"], from_domain)}
        if reason:
            entry["reason"] = reason
        results.append(entry)
    summary = "none"
    if results:
        summary = "pass" if any(r["result"] == "pass" for r in results) else results[0]["result"]
    return {
        "checked": True,
        "result": summary,
        "aligned_pass": any(r["result"] == "pass" and r["aligned"] for r in results),
        "signatures": results,
    }


def dns_txt_resolver(timeout: float = 5.0, cache_size: int = 1024) -> DnsResolver:
    """Return a resolver for :func:`analyse` that asks the system's DNS (dnspython) for TXT
    records, caching answers for their TTL. Blocking: call ``analyse`` off the event loop.
    Never used by the tests (no network there)."""
    import dns.exception
    import dns.resolver

    cache: dict[bytes, tuple[float, bytes | None]] = {}
    res = dns.resolver.Resolver()
    res.lifetime = timeout

    def resolve(name: bytes) -> bytes | None:
        now = time.monotonic()
        hit = cache.get(name)
        if hit and hit[0] > now:
            return hit[1]
        try:
            answer = res.resolve(name.decode("ascii", "replace").rstrip("."), "TXT")
            record: bytes | None = b"".join(b"".join(r.strings) for r in answer[:1])
            ttl = float(answer.rrset.ttl if answer.rrset is not None else 300)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            record, ttl = None, 300.0
        except dns.exception.DNSException as e:
            raise OSError(f"DNS lookup failed: {type(e).__name__}") from e
        if len(cache) >= cache_size:
            cache.clear()
        cache[name] = (now + min(ttl, 3600.0), record)
        return record

    return resolve


# --- end to end -------------------------------------------------------------------------------

_SIGNED_DATA = bytes.fromhex("2a864886f70d010702")
_ENVELOPED_DATA = bytes.fromhex("2a864886f70d010703")
_AUTH_ENVELOPED = bytes.fromhex("2a864886f70d0109100117")
_MAX_PARTS = 500


def _smime_kind(part: Message) -> str:
    smime_type = part_info(part).params.get("smime-type", "").lower()
    if "enveloped" in smime_type:
        return "encrypted"
    if "signed" in smime_type:
        return "signed"
    head = payload_bytes(part)[:96]
    if _SIGNED_DATA in head:
        return "signed"
    return "encrypted" if (_ENVELOPED_DATA in head or _AUTH_ENVELOPED in head or not head) else "signed"


def _e2e(msg: Message) -> dict[str, Any]:
    pgp = {"encrypted": False, "signed": False, "inline": False}
    smime = {"encrypted": False, "signed": False}
    for count, part in enumerate(msg.walk()):
        if count > _MAX_PARTS:
            break
        info = part_info(part)
        ctype = info.content_type
        protocol = info.params.get("protocol", "").lower()
        if ctype == "multipart/encrypted" and "pgp-encrypted" in protocol:
            pgp["encrypted"] = True
        elif ctype == "multipart/signed":
            if "pgp-signature" in protocol:
                pgp["signed"] = True
            elif "pkcs7-signature" in protocol:
                smime["signed"] = True
        elif ctype in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
            smime[_smime_kind(part)] = True
        elif ctype in ("application/pkcs7-signature", "application/x-pkcs7-signature"):
            smime["signed"] = True
        elif ctype == "application/pgp-encrypted":
            pgp["encrypted"] = True
        elif ctype == "application/pgp-signature":
            pgp["signed"] = True
        elif ctype in ("text/plain", "application/pgp") and not info.filename:
            payload = payload_bytes(part)
            if b"-----BEGIN PGP MESSAGE-----" in payload:
                pgp["encrypted"] = pgp["inline"] = True
            if b"-----BEGIN PGP SIGNED MESSAGE-----" in payload:
                pgp["signed"] = pgp["inline"] = True
    return {
        "pgp": pgp,
        "smime": smime,
        "encrypted": pgp["encrypted"] or smime["encrypted"],
        "signed": pgp["signed"] or smime["signed"],
        "verified": None,  # signatures are detected, not checked: the bridge holds no keys
    }


# --- summary ----------------------------------------------------------------------------------


def _from_domain(msg: Message) -> str | None:
    values = _raw_values(msg, "from")
    if not values:
        return None
    try:
        for address in POLICY.header_factory("from", values[0]).addresses:
            if address.domain:
                return str(address.domain).lower()
    except Exception:  # the header parser fails on some malformed groups
        pass
    m = re.search(r"@([A-Za-z0-9.-]+)", values[0])
    return m.group(1).lower() if m else None


def _raw_values(msg: Message, name: str) -> list[str]:
    name = name.lower()
    out = []
    for key, value in msg.raw_items():
        if key.lower() == name:
            try:
                out.append(str(value).encode("ascii", "surrogateescape").decode("utf-8", "replace"))
            except UnicodeError:
                out.append(str(value))
    return out


def analyse(
    raw: bytes,
    *,
    dns_resolver: DnsResolver | None = None,
    message: Message | None = None,
) -> dict[str, Any]:
    """Return the ``org.caliopen.privacy`` block of one raw mail (see the module docstring).

    Pure unless ``dns_resolver`` is given: then each DKIM signature is verified with it
    (``resolver(b"sel._domainkey.example.org.")`` returns the TXT record or ``None``; an
    exception counts as a temporary failure). Without one, DKIM signatures are listed but not
    checked. ``message`` is the already parsed ``raw`` (saves a parse). Never raises.
    """
    try:
        return _analyse(raw, dns_resolver, message)
    except Exception as e:  # a malformed mail gets an empty report, never an exception
        log.warning("Privacy analysis failed: %s", type(e).__name__)
        return {"version": VERSION, "network": "email", "level": "unknown", "score": 0, "error": type(e).__name__}


def _analyse(raw: bytes, resolver: DnsResolver | None, msg: Message | None) -> dict[str, Any]:
    if msg is None:
        msg = PARSER.parsebytes(raw)
    hops = [parse_received(v) for v in _raw_values(msg, "received")[:_MAX_HOPS]]
    external = [h for h in hops if not h["internal"]]
    encrypted = [h for h in external if h["tls"]]
    unknown = [h for h in external if h["tls"] is None]
    transport = {
        "hops": len(hops),
        "external_hops": len(external),
        "encrypted_hops": len(encrypted),
        "unknown_hops": len(unknown),
        "all_encrypted": bool(external) and len(encrypted) == len(external),
        "received": hops,
    }
    auth_values = _raw_values(msg, "authentication-results")
    provider = parse_authentication_results(auth_values[0]) if auth_values else None
    authentication = {
        "provider": provider,
        "spf": provider["spf"] if provider else None,
        "dkim": provider["dkim"] if provider else None,
        "dmarc": provider["dmarc"] if provider else None,
        "headers": len(auth_values),
    }
    from_domain = _from_domain(msg)
    if resolver is not None and _raw_values(msg, "dkim-signature"):
        dkim_block = _verify_dkim(raw, msg, resolver, from_domain)
    else:
        sigs = _dkim_domains(msg)
        dkim_block = {
            "checked": False,
            "result": None if sigs else "none",
            "aligned_pass": None,
            "signatures": [{**s, "result": None, "aligned": _aligned(s["domain"], from_domain)} for s in sigs[:8]],
        }
    e2e = _e2e(msg)

    if e2e["encrypted"]:
        level = "end_to_end"
    elif not hops:
        level = "unknown"
    elif transport["all_encrypted"]:
        level = "transport"
    elif encrypted:
        level = "partial"
    elif not external:
        level = "unknown"
    else:
        level = "none"

    score = 0.0
    if external:
        score += 40 * len(encrypted) / len(external)
    dkim_pass = dkim_block["result"] == "pass" if dkim_block["checked"] else authentication["dkim"] == "pass"
    score += 15 if dkim_pass else 0
    score += 10 if authentication["dmarc"] == "pass" else 0
    score += 5 if authentication["spf"] == "pass" else 0
    score += 20 if e2e["encrypted"] else 0
    score += 10 if e2e["signed"] else 0
    return {
        "version": VERSION,
        "network": "email",
        "level": level,
        "score": int(round(min(score, 100))),
        "transport": transport,
        "authentication": authentication,
        "dkim": dkim_block,
        "e2e": e2e,
    }
