"""Ed25519 signing exactly as dendro 0.2.17 does it.

The signed bytes are the 20 raw bytes of SHA-1 over the message string; dict messages are
serialised as sorted, compact JSON first. Keys travel as raw 32-byte hex strings.
"""

from __future__ import annotations

import hashlib
import json
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

RESOURCE_CODE_MAX_AGE_SEC = 300


def generate_keypair() -> tuple[str, str]:
    """Return (public key hex = compute resource id, private key hex)."""
    private_key = Ed25519PrivateKey.generate()
    private_hex = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    ).hex()
    return public_key_of(private_hex), private_hex


def public_key_of(private_key_hex: str) -> str:
    private_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private_key_hex))
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def deterministic_json(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), indent=None, allow_nan=False, sort_keys=True)


def _digest(message: str) -> bytes:
    return hashlib.sha1(message.encode("utf-8")).digest()


def sign_message_str(message: str, private_key_hex: str) -> str:
    private_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private_key_hex))
    return private_key.sign(_digest(message)).hex()


def verify_signature_str(message: str, public_key_hex: str, signature_hex: str) -> bool:
    try:
        public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        public_key.verify(bytes.fromhex(signature_hex), _digest(message))
    except (ValueError, InvalidSignature):
        return False
    return True


def make_resource_code(private_key_hex: str, timestamp: int | None = None) -> str:
    """The `<timestamp>-<signature>` code of a registration link."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"{timestamp}-{sign_message_str(deterministic_json({'timestamp': timestamp}), private_key_hex)}"


def verify_resource_code(code: str, public_key_hex: str, now: float | None = None) -> str | None:
    """Return None when the code is valid, or the reason it is not."""
    timestamp_text, _, signature = code.partition("-")
    if not timestamp_text.isdigit() or not signature:
        return "malformed resource code"
    timestamp = int(timestamp_text)
    now = time.time() if now is None else now
    if abs(timestamp - now) > RESOURCE_CODE_MAX_AGE_SEC:
        return "resource code expired"
    if not verify_signature_str(deterministic_json({"timestamp": timestamp}), public_key_hex, signature):
        return "resource code signature does not verify"
    return None


def compute_resource_headers(url_path: str, compute_resource_id: str, private_key_hex: str) -> dict[str, str]:
    """Headers of a compute-resource request: the signature covers the URL path alone."""
    return {
        "compute-resource-id": compute_resource_id,
        "compute-resource-payload": url_path,
        "compute-resource-signature": sign_message_str(url_path, private_key_hex),
    }
