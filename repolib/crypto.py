"""Every cryptographic primitive repolib uses, and nothing else.

This is the only module that imports ``cryptography`` or ``hmac``: the rest of the library calls
the small named operations below, so a review of what protects a secret reads one file.

- Resource credentials: AES-256-GCM under a per-resource random data key, with associated data
  binding the ciphertext to the resource's canonical definition.
- API keys: from the exact secret string, HKDF-SHA256 (salt = key id) derives a verifier and an
  X25519 private key under distinct labels.
- Granting a data key to an API key: ephemeral X25519 + HKDF + AES-256-GCM ("sealing"), which
  needs only the key's public key.
- The admin secret derives an X25519 key pair to which every data key is also sealed, and MACs
  audit checkpoints (HMAC-SHA256 under another derived key).

Every failure to decrypt raises one opaque :class:`~repolib.exceptions.SecretError`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .exceptions import SecretError

KEY_BYTES = 32
NONCE_BYTES = 12
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw

# Distinct HKDF labels: one secret never yields the same bytes for two purposes.
_INFO_VERIFIER = b"repolib/v1/key-verifier"
_INFO_X25519 = b"repolib/v1/key-x25519"
_INFO_SEAL = b"repolib/v1/seal"
_INFO_ADMIN_X25519 = b"repolib/v1/admin-x25519"
_INFO_ADMIN_VERIFIER = b"repolib/v1/admin-verifier"
_INFO_AUDIT_MAC = b"repolib/v1/audit-mac"

_DECRYPT_FAILED = "decryption failed: the data was altered, moved, or the key does not match"


def random_bytes(n: int = KEY_BYTES) -> bytes:
    """Fresh random bytes from the OS (data keys, admin secrets, salts)."""
    return os.urandom(n)


def random_string(alphabet: str, length: int) -> str:
    """A uniformly random string over ``alphabet`` (key ids and key secrets)."""
    return "".join(secrets.choice(alphabet) for _ in range(length))


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison, so a verifier check leaks no timing."""
    return hmac.compare_digest(a, b)


def hkdf(ikm: bytes, *, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


# -- AEAD -----------------------------------------------------------------------------------


def encrypt(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """AES-256-GCM; returns nonce || ciphertext+tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def decrypt(key: bytes, blob: bytes, ad: bytes) -> bytes:
    if not isinstance(blob, bytes | bytearray | memoryview) or len(blob) < NONCE_BYTES + 16:
        raise SecretError(_DECRYPT_FAILED)
    blob = bytes(blob)
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ad)
    except (InvalidTag, ValueError) as exc:
        raise SecretError(_DECRYPT_FAILED) from exc


# -- API key material -----------------------------------------------------------------------


class KeyMaterial:
    """What an API key secret derives: the stored verifier and an X25519 key pair.

    The private key stays in memory only; ``repr`` shows nothing secret.
    """

    __slots__ = ("_private", "public", "verifier")

    def __init__(self, verifier: bytes, private: X25519PrivateKey) -> None:
        self.verifier = verifier
        self._private = private
        self.public = private.public_key().public_bytes(_RAW, _RAW_PUB)

    def __repr__(self) -> str:
        return "KeyMaterial(<hidden>)"

    def unseal(self, blob: bytes, ad: bytes) -> bytes:
        """Open a data key sealed to this key's public key."""
        if len(blob) < KEY_BYTES:
            raise SecretError(_DECRYPT_FAILED)
        eph_pub = blob[:KEY_BYTES]
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        except ValueError as exc:
            raise SecretError(_DECRYPT_FAILED) from exc
        kek = hkdf(shared, salt=eph_pub + self.public, info=_INFO_SEAL)
        return decrypt(kek, blob[KEY_BYTES:], ad)


def derive_key_material(secret: str, key_id: str) -> KeyMaterial:
    """Derive verifier and X25519 key from the exact secret string (no normalisation)."""
    ikm = secret.encode("ascii")
    salt = key_id.encode("ascii")
    verifier = hkdf(ikm, salt=salt, info=_INFO_VERIFIER)
    private = X25519PrivateKey.from_private_bytes(hkdf(ikm, salt=salt, info=_INFO_X25519))
    return KeyMaterial(verifier, private)


def seal(public: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """Encrypt to an X25519 public key: eph_pub || nonce || ciphertext+tag."""
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(_RAW, _RAW_PUB)
    try:
        shared = eph.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise SecretError("cannot seal to this key: its public key is malformed") from exc
    kek = hkdf(shared, salt=eph_pub + public, info=_INFO_SEAL)
    return eph_pub + encrypt(kek, plaintext, ad)


# -- Admin secret ---------------------------------------------------------------------------


def admin_material(admin_secret: bytes) -> KeyMaterial:
    """The admin's X25519 key pair, derived from the admin secret.

    Data keys are sealed to its public key (stored in the catalog), so an ADMIN API key that
    attaches a resource can wrap the new data key for the admin without knowing the secret.
    """
    private = X25519PrivateKey.from_private_bytes(
        hkdf(admin_secret, salt=b"", info=_INFO_ADMIN_X25519)
    )
    return KeyMaterial(admin_verifier(admin_secret), private)


def admin_verifier(admin_secret: bytes) -> bytes:
    """A value stored in the catalog to tell whether a given admin secret is the right one."""
    return hkdf(admin_secret, salt=b"", info=_INFO_ADMIN_VERIFIER)


def passphrase_secret(passphrase: str, salt: bytes) -> bytes:
    """Derive a 256-bit admin secret from a passphrase with scrypt (n=2**15, r=8, p=1)."""
    if not passphrase:
        raise SecretError("the admin passphrase is empty")
    return Scrypt(salt=salt, length=KEY_BYTES, n=2**15, r=8, p=1).derive(passphrase.encode())


def audit_mac(admin_secret: bytes, message: bytes) -> bytes:
    key = hkdf(admin_secret, salt=b"", info=_INFO_AUDIT_MAC)
    return hmac.new(key, message, hashlib.sha256).digest()


def audit_mac_ok(admin_secret: bytes, message: bytes, mac: bytes) -> bool:
    return equal(audit_mac(admin_secret, message), mac)
