"""Credentials sealed at rest with AES-256-GCM (bridges.core.secrets)."""

from __future__ import annotations

import base64

import pytest

from bridges.core.secrets import InvalidSecretKey, SealedDataError, SecretBox

SECRET = {"password": "correct horse battery staple", "token": "tok-\u00e9t\u00e9-42", "port": 993}


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _tamper(sealed: str, index: int) -> str:
    version, body = sealed.split(":", 1)
    blob = bytearray(_b64(body))
    blob[index] ^= 0x01
    return f"{version}:" + base64.urlsafe_b64encode(bytes(blob)).decode().rstrip("=")


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(SecretBox.generate_key())


def test_round_trip(box: SecretBox) -> None:
    sealed = box.seal(SECRET)
    assert sealed.startswith("v1:")
    assert box.open(sealed) == SECRET


def test_sealed_text_does_not_contain_the_secret(box: SecretBox) -> None:
    sealed = box.seal(SECRET)
    for value in ("correct horse", "staple", "tok-", "password", "token"):
        assert value not in sealed
    for encoded in (base64.b64encode(b"correct horse"), base64.urlsafe_b64encode(b"correct horse")):
        assert encoded.decode()[:12] not in sealed
    assert b"correct horse" not in _b64(sealed.split(":", 1)[1])


def test_each_seal_uses_a_new_nonce(box: SecretBox) -> None:
    first, second = box.seal(SECRET), box.seal(SECRET)
    assert first != second
    assert _b64(first[3:])[:12] != _b64(second[3:])[:12]
    assert box.open(first) == box.open(second) == SECRET


def test_wrong_key_fails(box: SecretBox) -> None:
    sealed = box.seal(SECRET)
    other = SecretBox(SecretBox.generate_key())
    with pytest.raises(SealedDataError, match="secret_key differs") as excinfo:
        other.open(sealed)
    assert isinstance(excinfo.value, ValueError)
    assert "horse" not in str(excinfo.value)


@pytest.mark.parametrize("index", [0, 11, 12, -1])  # nonce, first ciphertext byte, tag
def test_tampering_fails(box: SecretBox, index: int) -> None:
    sealed = box.seal(SECRET)
    with pytest.raises(SealedDataError):
        box.open(_tamper(sealed, index))


def test_truncated_or_foreign_text_fails(box: SecretBox) -> None:
    sealed = box.seal(SECRET)
    for bad in (sealed[:10], "v2:" + sealed[3:], "plain text", "v1:!!!not base64!!!", "v1:"):
        with pytest.raises(SealedDataError):
            box.open(bad)


def test_context_is_bound(box: SecretBox) -> None:
    sealed = box.seal(SECRET, context="login-a")
    assert box.open(sealed, context="login-a") == SECRET
    with pytest.raises(SealedDataError):
        box.open(sealed, context="login-b")
    with pytest.raises(SealedDataError):
        box.open(sealed)


def test_empty_means_no_secrets(box: SecretBox) -> None:
    assert box.open("") == {}
    assert box.open(box.seal({})) == {}


def test_generated_keys() -> None:
    key = SecretBox.generate_key()
    assert len(_b64(key)) == 32
    assert key != SecretBox.generate_key()
    assert SecretBox(key.rstrip("=")).open(SecretBox(key).seal(SECRET)) == SECRET  # padding optional
    assert SecretBox(_b64(key)).open(SecretBox(key).seal(SECRET)) == SECRET  # raw bytes too


@pytest.mark.parametrize(
    "key",
    [
        "",
        "short",
        base64.urlsafe_b64encode(b"x" * 16).decode(),
        base64.urlsafe_b64encode(b"x" * 33).decode(),
        "not base64 at all!!",
        "*" + SecretBox.generate_key()[1:],  # right length, a character outside the alphabet
    ],
)
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidSecretKey, match="bridge.secret_key"):
        SecretBox(key)


def test_key_is_not_shown(box: SecretBox) -> None:
    assert "hidden" in repr(box)


def test_only_dicts_are_sealed(box: SecretBox) -> None:
    with pytest.raises(TypeError):
        box.seal(["not", "a", "dict"])  # type: ignore[arg-type]
