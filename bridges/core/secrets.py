"""Encryption at rest for remote credentials (passwords, tokens) in the bridge database.

A :class:`SecretBox` is made from the config key ``bridge.secret_key`` (32 random bytes,
urlsafe base64, as :meth:`SecretBox.generate_key` makes). :meth:`SecretBox.seal` turns a
JSON-able dict into text for a TEXT column; :meth:`SecretBox.open` turns it back.

Sealed text is ``v1:`` followed by urlsafe base64 (unpadded) of a 12-byte random nonce and the
AES-256-GCM ciphertext with its tag. An optional ``context`` (for example the login ID) is
authenticated too, so a sealed value copied into another row does not open there. An empty
string stands for "no secrets" and opens to ``{}``.

Nothing here does I/O, and no error message contains a secret or the key.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["SecretBox", "SecretBoxError", "InvalidSecretKey", "SealedDataError"]

_VERSION = "v1"
_PREFIX = _VERSION + ":"
_NONCE_BYTES = 12
_KEY_BYTES = 32
_TAG_BYTES = 16


class SecretBoxError(ValueError):
    """Base of this module's errors."""


class InvalidSecretKey(SecretBoxError):
    """``bridge.secret_key`` is not 32 bytes of urlsafe base64."""


class SealedDataError(SecretBoxError):
    """Sealed text that does not open: a different key, tampered or truncated data, or not
    something :meth:`SecretBox.seal` wrote."""


def _b64decode(text: str) -> bytes:
    """Strict urlsafe base64 (padding optional): raises binascii.Error on any other character."""
    text = text.strip()
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


class SecretBox:
    """Seals and opens small JSON documents with AES-256-GCM under one key."""

    __slots__ = ("_aead",)

    def __init__(self, key: str | bytes) -> None:
        """Make a box from the urlsafe base64 text of a 32-byte key (or the raw 32 bytes).

        Raises:
            InvalidSecretKey: the key does not decode to exactly 32 bytes.
        """
        if isinstance(key, str):
            try:
                raw = _b64decode(key)
            except (binascii.Error, ValueError):
                raise InvalidSecretKey(
                    "bridge.secret_key is not urlsafe base64 (make one with SecretBox.generate_key())"
                ) from None
        else:
            raw = bytes(key)
        if len(raw) != _KEY_BYTES:
            raise InvalidSecretKey(
                f"bridge.secret_key must hold {_KEY_BYTES} bytes, it holds {len(raw)}"
            )
        self._aead = AESGCM(raw)

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    @staticmethod
    def generate_key() -> str:
        """A new random key, as the urlsafe base64 text ``bridge.secret_key`` takes."""
        return base64.urlsafe_b64encode(os.urandom(_KEY_BYTES)).decode("ascii")

    def seal(self, data: dict[str, Any], *, context: str = "") -> str:
        """Encrypt ``data`` (a JSON-able dict) with a fresh random nonce.

        ``context`` is authenticated, not stored: :meth:`open` needs the same one.

        Raises:
            TypeError: ``data`` is not a dict, or holds something JSON cannot encode.
        """
        if not isinstance(data, dict):
            raise TypeError(f"SecretBox.seal takes a dict, not {type(data).__name__}")
        plaintext = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, self._aad(context))
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")

    def open(self, text: str, *, context: str = "") -> dict[str, Any]:
        """Decrypt what :meth:`seal` wrote; ``""`` opens to ``{}``.

        Raises:
            SealedDataError: a wrong key or context, tampered or truncated data, an unknown
                format version.
        """
        if not text:
            return {}
        version, sep, body = text.partition(":")
        if not sep or version != _VERSION:
            raise SealedDataError("sealed secrets have an unknown format (expected 'v1:...')")
        try:
            blob = _b64decode(body)
        except (binascii.Error, ValueError):
            raise SealedDataError("sealed secrets are not valid base64") from None
        if len(blob) < _NONCE_BYTES + _TAG_BYTES:
            raise SealedDataError("sealed secrets are truncated")
        nonce, sealed = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]
        try:
            plaintext = self._aead.decrypt(nonce, sealed, self._aad(context))
        except InvalidTag:
            raise SealedDataError(
                "sealed secrets do not open: bridge.secret_key differs from the one that "
                "sealed them, or the data was changed"
            ) from None
        try:
            data = json.loads(plaintext.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SealedDataError("sealed secrets hold no JSON document") from None
        if not isinstance(data, dict):
            raise SealedDataError("sealed secrets hold no JSON object")
        return data

    @staticmethod
    def _aad(context: str) -> bytes:
        return f"caliopen-secrets/{_VERSION}\x00{context}".encode("utf-8")
