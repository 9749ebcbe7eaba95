"""Author pseudonymisation: a keyed hash, so the same author links across posts but cannot be read back."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path


def pseudonymise(author: str, key: bytes) -> str:
    """HMAC-SHA256 of the author under ``key``, hex, 32 characters (128 bits)."""
    if not key:
        raise ValueError("an empty key would make the hash reversible by brute force: configure privacy.author_key")
    return hmac.new(key, author.strip().encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def load_author_key(configured: str | None, key_file: Path) -> bytes:
    """The configured key, else the one kept in ``key_file`` (created once, random, mode 0600)."""
    if configured:
        return configured.encode("utf-8")
    try:
        return bytes.fromhex(key_file.read_text().strip())
    except FileNotFoundError:
        pass
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key.hex() + "\n")
    return key
