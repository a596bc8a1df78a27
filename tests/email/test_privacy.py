"""The privacy block of a received mail: Received hops and TLS, Authentication-Results, the
bridge's own DKIM check (DNS answers injected), PGP and S/MIME."""

from __future__ import annotations

import base64
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridges.email.convert import email_to_matrix
from bridges.email.privacy import analyse, parse_authentication_results, parse_received

DATA = Path(__file__).parent / "data"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


# --- Received ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, tls, version, protocol",
    [
        ("from a.example (a.example [192.0.2.1]) (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)) "
         "by mx.example (Postfix) with ESMTPS id 1; Tue, 14 May 2024 09:12:45 +0000", True, "TLSv1.3", "ESMTPS"),
        ("from laptop ([2001:db8::1]) by smtp.gmail.com with ESMTPSA id x.2024 for <b@x> "
         "(version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256); Tue, 14 May 2024 02:12:43 -0700", True,
         "TLSv1.3", "ESMTPSA"),
        ("from relay ([192.0.2.5]) by mx with esmtps  (TLS1.2) tls TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 "
         "(Exim 4.97) id 1s7; Wed, 15 May 2024 11:00:01 +0000", True, "TLSv1.2", "esmtps"),
        ("from AM0PR07 (2603:10a6:208:1::1) by AS8PR07 (2603:10a6:20b:2::2) with Microsoft SMTP Server "
         "(version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.7544.41; "
         "Wed, 15 May 2024 08:01:00 +0000", True, "TLSv1.2", "Microsoft"),
        ("from relay.old.example (relay.old.example [198.51.100.7]) by mx (Postfix) with ESMTP id 4X; "
         "Wed, 15 May 2024 10:00:02 +0000", False, None, "ESMTP"),
        ("from [203.0.113.5] (helo=desktop) by relay with esmtpa (Exim 4.96) id 1s; Wed, 15 May 2024 10:00:01 +0000",
         False, None, "esmtpa"),
        ("from webmail by mail.example with HTTP; Wed, 15 May 2024 10:00:01 +0000", False, None, "HTTP"),
        ("from web.example by api.example with HTTPS; Wed, 15 May 2024 10:00:01 +0000", True, None, "HTTPS"),
        ("by mail-wr1-f41.google.com with SMTP id ffacd0b85a97d; Tue, 14 May 2024 02:12:44 -0700", False, None,
         "SMTP"),
        ("from mx.caliopen.test by mail.caliopen.test with LMTP id 8JQ; Tue, 14 May 2024 09:12:46 +0000", False,
         None, "LMTP"),
        ("from x.example (x.example [192.0.2.9]) by y.example (Some MTA) id 77; Tue, 14 May 2024 09:12:46 +0000",
         None, None, None),
    ],
)
def test_parse_received_tls(header: str, tls: bool | None, version: str | None, protocol: str | None) -> None:
    hop = parse_received(header)
    assert hop["tls"] is tls
    assert hop["tls_version"] == version
    assert (hop["with"] or "").split(" ")[0] == (protocol or "")


def test_parse_received_fields() -> None:
    hop = parse_received(
        "from mail-wr1-f41.google.com (mail-wr1-f41.google.com [209.85.221.41])\r\n\t(using TLSv1.3 with cipher "
        "TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n\tby mx.caliopen.test (Postfix) with ESMTPS id 4Xq2\r\n\t"
        "for <bob@caliopen.test>; Tue, 14 May 2024 09:12:45 +0000 (UTC)")
    assert hop["from"] == "mail-wr1-f41.google.com"
    assert hop["from_ip"] == "209.85.221.41"
    assert hop["by"] == "mx.caliopen.test"
    assert hop["cipher"] == "TLS_AES_256_GCM_SHA384"
    assert hop["internal"] is False
    assert hop["date_ms"] == 1715677965000


@pytest.mark.parametrize(
    "header",
    [
        "from localhost (localhost [127.0.0.1]) by relay (Postfix) with SMTP id 1; Wed, 15 May 2024 10:00:00 +0000",
        "from internal-relay ([10.0.0.5]) by mail.partner.example with esmtps id 1; Wed, 15 May 2024 10:00:00 +0000",
        "from mx.caliopen.test by mail.caliopen.test with LMTP id 8J; Tue, 14 May 2024 09:12:46 +0000",
        "by mail.example (Postfix, from userid 1000) id 4X; Tue, 14 May 2024 09:12:46 +0000",
    ],
)
def test_internal_hops(header: str) -> None:
    assert parse_received(header)["internal"] is True


@pytest.mark.parametrize("garbage", ["", ";", "(((", "from", "by ; ; ;", "\x00\x01", "from a (b [999.1.1.1]) by c"])
def test_parse_received_garbage(garbage: str) -> None:
    hop = parse_received(garbage)
    assert hop["tls"] in (None, False, True)


def test_all_hops_encrypted_is_transport_level() -> None:
    p = analyse(load("received_tls.eml"))
    t = p["transport"]
    assert t["hops"] == 4
    # The final LMTP delivery and the sender's provider's hop without a "from" stay inside one
    # provider; the client → provider and provider → provider hops cross the internet.
    assert t["external_hops"] == 2
    assert t["encrypted_hops"] == 2
    assert t["all_encrypted"] is True
    assert p["level"] == "transport"
    assert [h["tls"] for h in t["received"]] == [False, True, False, True]
    assert [h["internal"] for h in t["received"]] == [True, False, True, False]


def test_plain_chain_is_none_level() -> None:
    p = analyse(load("received_plain.eml"))
    t = p["transport"]
    assert t["hops"] == 3 and t["external_hops"] == 2 and t["encrypted_hops"] == 0
    assert p["level"] == "none"
    assert p["score"] == 0
    assert p["authentication"]["spf"] == "softfail" and p["authentication"]["dmarc"] == "fail"


def test_mixed_chain_is_partial() -> None:
    p = analyse(load("received_mixed.eml"))
    t = p["transport"]
    assert (t["external_hops"], t["encrypted_hops"]) == (2, 1)
    assert p["level"] == "partial"
    assert 0 < p["score"] < 40


def test_no_received_is_unknown() -> None:
    p = analyse(load("no_date_no_from.eml"))
    assert p["level"] == "unknown" and p["transport"]["hops"] == 0


# --- Authentication-Results -------------------------------------------------------------------


def test_provider_authentication_results() -> None:
    p = analyse(load("received_tls.eml"))
    auth = p["authentication"]
    assert (auth["spf"], auth["dkim"], auth["dmarc"]) == ("pass", "pass", "pass")
    assert auth["provider"]["authserv_id"] == "mx.caliopen.test"
    assert auth["headers"] == 2  # the forged one below the provider's is counted, not trusted
    assert p["score"] == 40 + 15 + 10 + 5


def test_parse_authentication_results() -> None:
    res = parse_authentication_results(
        'mx.google.com;\r\n dkim=pass header.i=@example.com header.s=sel header.b="ab cd";\r\n '
        "dkim=fail (bad sig) header.i=@other.example;\r\n spf=pass (google.com: domain of a@example.com designates "
        "192.0.2.1 as permitted sender) smtp.mailfrom=a@example.com;\r\n dmarc=pass (p=REJECT sp=REJECT dis=NONE) "
        "header.from=example.com; arc=none")
    assert res["authserv_id"] == "mx.google.com"
    assert (res["dkim"], res["spf"], res["dmarc"], res["arc"]) == ("pass", "pass", "pass", "none")
    dkims = [m for m in res["methods"] if m["method"] == "dkim"]
    assert [m["result"] for m in dkims] == ["pass", "fail"]
    assert dkims[0]["props"]["header.i"] == "@example.com"
    spf = next(m for m in res["methods"] if m["method"] == "spf")
    assert spf["props"]["smtp.mailfrom"] == "a@example.com"
    assert parse_authentication_results("mx.example; none")["spf"] is None
    assert parse_authentication_results("")["methods"] == []


# --- DKIM -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, bytes]:
    """A fresh RSA key: (private key PEM for signing, the DNS TXT record publishing it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def signed_mail(private: bytes, *, domain: bytes = b"example.org", from_addr: str = "alice@example.org") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Alice <{from_addr}>"
    msg["To"] = "bob@caliopen.test"
    msg["Subject"] = "Signed by my provider"
    msg["Date"] = "Tue, 14 May 2024 11:12:31 +0200"
    msg["Message-ID"] = "<dkim-test@example.org>"
    msg.set_content("Hello Bob,\nthis mail carries a DKIM signature.\n")
    raw = msg.as_bytes().replace(b"\n", b"\r\n")
    signature = dkim.sign(raw, b"sel1", domain, private,
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature + raw


class FakeDns:
    """Answers TXT queries from a dict and records what was asked."""

    def __init__(self, records: dict[bytes, bytes]) -> None:
        self.records = records
        self.queries: list[bytes] = []

    def __call__(self, name: bytes) -> bytes | None:
        self.queries.append(name)
        return self.records.get(name)


def test_dkim_pass(dkim_key: tuple[bytes, bytes]) -> None:
    private, txt = dkim_key
    dns = FakeDns({b"sel1._domainkey.example.org.": txt})
    p = analyse(signed_mail(private), dns_resolver=dns)
    assert dns.queries == [b"sel1._domainkey.example.org."]
    assert p["dkim"]["checked"] is True
    assert p["dkim"]["result"] == "pass"
    assert p["dkim"]["aligned_pass"] is True
    assert p["dkim"]["signatures"] == [{"domain": "example.org", "selector": "sel1", "result": "pass", "aligned": True}]
    assert p["score"] == 15


def test_dkim_pass_survives_lf_line_endings(dkim_key: tuple[bytes, bytes]) -> None:
    private, txt = dkim_key
    raw = signed_mail(private).replace(b"\r\n", b"\n")
    assert analyse(raw, dns_resolver=FakeDns({b"sel1._domainkey.example.org.": txt}))["dkim"]["result"] == "pass"


def test_dkim_fails_on_a_changed_body(dkim_key: tuple[bytes, bytes]) -> None:
    private, txt = dkim_key
    raw = signed_mail(private).replace(b"Hello Bob", b"Hello Eve")
    p = analyse(raw, dns_resolver=FakeDns({b"sel1._domainkey.example.org.": txt}))
    assert p["dkim"]["result"] == "fail"
    assert "body hash" in p["dkim"]["signatures"][0]["reason"]


def test_dkim_fails_on_a_changed_header(dkim_key: tuple[bytes, bytes]) -> None:
    private, txt = dkim_key
    raw = signed_mail(private).replace(b"Subject: Signed by my provider", b"Subject: Pay this invoice")
    assert analyse(raw, dns_resolver=FakeDns({b"sel1._domainkey.example.org.": txt}))["dkim"]["result"] == "fail"


def test_dkim_fails_with_another_key(dkim_key: tuple[bytes, bytes]) -> None:
    private, _ = dkim_key
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    dns = FakeDns({b"sel1._domainkey.example.org.": b"v=DKIM1; k=rsa; p=" + base64.b64encode(other)})
    assert analyse(signed_mail(private), dns_resolver=dns)["dkim"]["result"] == "fail"


def test_dkim_without_a_key_in_dns(dkim_key: tuple[bytes, bytes]) -> None:
    private, _ = dkim_key
    p = analyse(signed_mail(private), dns_resolver=FakeDns({}))
    assert p["dkim"]["result"] == "permerror"
    assert "no key" in p["dkim"]["signatures"][0]["reason"]


def test_dkim_dns_failure_is_temporary(dkim_key: tuple[bytes, bytes]) -> None:
    private, _ = dkim_key

    def broken(name: bytes) -> bytes | None:
        raise OSError("no route to the DNS server")

    assert analyse(signed_mail(private), dns_resolver=broken)["dkim"]["result"] == "temperror"


def test_dkim_signature_of_another_domain_is_not_aligned(dkim_key: tuple[bytes, bytes]) -> None:
    private, txt = dkim_key
    raw = signed_mail(private, domain=b"mailer.example", from_addr="ceo@bank.example")
    p = analyse(raw, dns_resolver=FakeDns({b"sel1._domainkey.mailer.example.": txt}))
    assert p["dkim"]["result"] == "pass"
    assert p["dkim"]["aligned_pass"] is False
    assert p["dkim"]["signatures"][0]["aligned"] is False


def test_dkim_not_checked_without_resolver(dkim_key: tuple[bytes, bytes]) -> None:
    private, _ = dkim_key
    p = analyse(signed_mail(private))
    assert p["dkim"]["checked"] is False and p["dkim"]["result"] is None
    assert p["dkim"]["signatures"][0]["domain"] == "example.org"
    unsigned = analyse(load("received_plain.eml"), dns_resolver=FakeDns({}))
    assert unsigned["dkim"]["result"] == "none"


def test_malformed_dkim_signature() -> None:
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; d=; s=; b=!!!\r\nFrom: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    p = analyse(raw, dns_resolver=FakeDns({}))
    assert p["dkim"]["checked"] is True and p["dkim"]["result"] in ("permerror", "fail")


def test_conversion_checks_dkim_only_with_a_resolver(dkim_key: tuple[bytes, bytes]) -> None:
    private, txt = dkim_key
    raw = signed_mail(private)
    assert email_to_matrix(raw, max_attachment_size=100).privacy["dkim"]["checked"] is False
    dns = FakeDns({b"sel1._domainkey.example.org.": txt})
    converted = email_to_matrix(raw, max_attachment_size=100, dns_resolver=dns)
    assert converted.privacy["dkim"]["result"] == "pass"
    assert converted.parts[0].content["body"].startswith("Signed by my provider")


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, pgp, smime, level",
    [
        ("pgp_mime_encrypted.eml", {"encrypted": True, "signed": False, "inline": False},
         {"encrypted": False, "signed": False}, "end_to_end"),
        ("pgp_mime_signed.eml", {"encrypted": False, "signed": True, "inline": False},
         {"encrypted": False, "signed": False}, "unknown"),
        ("pgp_inline.eml", {"encrypted": True, "signed": False, "inline": True},
         {"encrypted": False, "signed": False}, "end_to_end"),
        ("smime_signed.eml", {"encrypted": False, "signed": False, "inline": False},
         {"encrypted": False, "signed": True}, "unknown"),
        ("smime_encrypted.eml", {"encrypted": False, "signed": False, "inline": False},
         {"encrypted": True, "signed": False}, "end_to_end"),
        ("smime_opaque_signed.eml", {"encrypted": False, "signed": False, "inline": False},
         {"encrypted": False, "signed": True}, "unknown"),
        ("gmail_reply.eml", {"encrypted": False, "signed": False, "inline": False},
         {"encrypted": False, "signed": False}, "transport"),
    ],
)
def test_end_to_end_detection(name: str, pgp: dict, smime: dict, level: str) -> None:
    p = analyse(load(name))
    assert p["e2e"]["pgp"] == pgp
    assert p["e2e"]["smime"] == smime
    assert p["e2e"]["encrypted"] == (pgp["encrypted"] or smime["encrypted"])
    assert p["e2e"]["signed"] == (pgp["signed"] or smime["signed"])
    assert p["e2e"]["verified"] is None
    assert p["level"] == level


def test_inline_signed_pgp() -> None:
    raw = (b"From: a@example.org\r\nContent-Type: text/plain\r\n\r\n-----BEGIN PGP SIGNED MESSAGE-----\r\n"
           b"Hash: SHA256\r\n\r\nHello\r\n-----BEGIN PGP SIGNATURE-----\r\nabc\r\n-----END PGP SIGNATURE-----\r\n")
    e2e = analyse(raw)["e2e"]
    assert e2e["pgp"] == {"encrypted": False, "signed": True, "inline": True}


def test_smime_type_sniffed_from_content() -> None:
    """Without smime-type, the CMS content type in the payload tells signed from enveloped."""
    raw = load("smime_opaque_signed.eml").replace(b" smime-type=signed-data;", b"")
    assert analyse(raw)["e2e"]["smime"] == {"encrypted": False, "signed": True}


def test_encrypted_mail_with_tls_scores_high() -> None:
    p = analyse(load("pgp_mime_encrypted.eml"))
    assert p["level"] == "end_to_end"
    assert p["score"] == 40 + 20


# --- robustness -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"\x00\xff\xfe", b"Received: (((\r\n\r\n", b"garbage without headers",
                                 b"Authentication-Results: ;;;;===\r\nReceived: from\r\n\r\n"])
def test_analyse_never_raises(raw: bytes) -> None:
    p = analyse(raw, dns_resolver=FakeDns({}))
    assert p["version"] == 1 and p["network"] == "email"
    assert p["level"] in ("end_to_end", "transport", "partial", "none", "unknown")


def test_privacy_block_is_in_every_converted_message() -> None:
    converted = email_to_matrix(load("received_tls.eml"), max_attachment_size=100)
    assert converted.privacy is not None and converted.privacy["level"] == "transport"
