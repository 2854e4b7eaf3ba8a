"""The facade's keys as JOSE wants them: the JWK and its kid, the JWKS, and compact JWS signing (RS256, ES256).

Written on `cryptography` rather than with a JWT library: signing is two calls, and the two traps strict relying
parties check are handled here, in view: the kid is the RFC 7638 thumbprint, and an ES256 signature is the raw
r||s pair (RFC 7518 §3.4), never the DER that `cryptography` returns.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

if TYPE_CHECKING:
    from ..config import SigningKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(number: int, size: int | None = None) -> str:
    return b64url(number.to_bytes(size or (number.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class Signer:
    """One private key, with what the JWKS publishes about it."""

    key: SigningKey
    alg: str  # RS256 or ES256
    kid: str
    jwk: dict[str, str]  # the public JWK, as published

    @classmethod
    def of(cls, key: SigningKey) -> Signer:
        if isinstance(key, rsa.RSAPrivateKey):
            numbers = key.public_key().public_numbers()
            alg, members = "RS256", {"e": _uint(numbers.e), "kty": "RSA", "n": _uint(numbers.n)}
        else:
            point = key.public_key().public_numbers()
            alg, members = "ES256", {"crv": "P-256", "kty": "EC", "x": _uint(point.x, 32), "y": _uint(point.y, 32)}
        # RFC 7638: the required members only, in lexicographic order, no whitespace.
        canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
        kid = b64url(hashlib.sha256(canonical).digest())
        return cls(key, alg, kid, {**members, "use": "sig", "alg": alg, "kid": kid})

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS (a JWT) of these claims, under this key's kid."""
        header = {"alg": self.alg, "typ": "JWT", "kid": self.kid}
        signing_input = f"{_json64(header)}.{_json64(claims)}".encode("ascii")
        if isinstance(self.key, rsa.RSAPrivateKey):
            signature = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JOSE's raw form, not DER
        return f"{signing_input.decode('ascii')}.{b64url(signature)}"


def _json64(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def jwks(signers: list[Signer]) -> dict[str, Any]:
    return {"keys": [signer.jwk for signer in signers]}


def private_key_bytes(key: SigningKey) -> bytes:
    """The key's private material, as the input from which sealing keys are derived (never written out)."""
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def generate_pem(kind: str = "rsa") -> str:
    """A new signing key as PEM (PKCS #8): RSA 2048 for RS256, or EC P-256 for ES256."""
    key: SigningKey = (
        rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode("ascii")
