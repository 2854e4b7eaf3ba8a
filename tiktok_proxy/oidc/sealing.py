"""Sealed values: what the facade must remember between steps, carried by the browser or the relying party.

The OIDC state sent to TikTok and the code given to the relying party are sealed with AES-GCM (authenticated
encryption: unreadable and unchangeable by whoever holds them), with an expiry inside. So the facade keeps
no state, and any instance can serve any step. The AES keys are derived with HKDF from the signing keys, one per
purpose, so a sealed state can never be used as a code or the other way round; unsealing also tries the
next and the previous keys, so that no sign-in in flight breaks during a key rotation, even when the instances
of a fleet are part-way through a rollout.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = b"\x01"
NONCE_BYTES = 12


class Unsealable(Exception):
    """Missing, forged, altered, sealed for another purpose or by an unknown key, or expired. The message is the
    predicate ("is not valid", "has expired"), and never says more."""


class Sealer:
    """Seals and unseals values for one purpose (e.g. "state" or "code")."""

    def __init__(self, purpose: str, secrets: Iterable[bytes]) -> None:
        self.purpose = purpose.encode()
        # The first key seals; every key unseals.
        self.keys = [AESGCM(_derive(secret, self.purpose)) for secret in secrets]

    def seal(self, value: dict[str, Any], lifetime: int) -> str:
        document = json.dumps({**value, "exp": int(time.time()) + lifetime}, separators=(",", ":")).encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = VERSION + nonce + self.keys[0].encrypt(nonce, document, self.purpose)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def unseal(self, text: str | None) -> dict[str, Any]:
        if not text:
            raise Unsealable("is missing")
        try:
            sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise Unsealable("is not valid") from None
        if sealed[:1] != VERSION or len(sealed) < 1 + NONCE_BYTES + 16:
            raise Unsealable("is not valid")
        nonce, ciphertext = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        for key in self.keys:
            try:
                value = json.loads(key.decrypt(nonce, ciphertext, self.purpose))
                break
            except InvalidTag:
                continue
        else:
            raise Unsealable("is not valid")
        if not isinstance(value, dict) or not isinstance(value.get("exp"), int) or value["exp"] < time.time():
            raise Unsealable("has expired")
        return value


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tiktok-proxy sealing v1 " + purpose).derive(
        secret
    )
