"""Who may use the console: argon2 password hashes, the console key, session tokens and CSRF tokens.

A session cookie holds a random token; the database keeps only its keyed hash (HMAC with the console
key), so neither a leaked table nor a leaked key alone gives a working cookie. A form's CSRF token is
another HMAC of the same token, so it needs no storage and dies with the session. Before sign-in, the
sign-in form is protected the same way by a short-lived random nonce in its own cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from monitor.config import ConsoleSettings
from monitor.errors import ConfigError

ROLES = ("viewer", "reviewer", "admin")
#: Roles that may store reviews; a viewer only reads.
REVIEWERS = frozenset({"reviewer", "admin"})
MIN_PASSWORD = 10

_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password anyone has")


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"a console password needs at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; takes an argon2 verification's time even without a hash."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_username(username: str) -> str:
    name = username.strip()
    if not (1 <= len(name) <= 64) or not all(c.isalnum() or c in "._-@" for c in name):
        raise ConfigError(f"a username is 1-64 letters, digits or . _ - @, got {username!r}")
    return name


def load_secret_key(settings: ConsoleSettings, data_dir: Path) -> bytes:
    """The configured key, else the one in ``secret_key_path`` (default MONITOR_DATA_DIR/console.key),
    created there (mode 0600) on first use. Every console replica must share one key."""
    if settings.secret_key is not None:
        key = settings.secret_key.get_secret_value().encode()
        if len(key) < 16:
            raise ConfigError("MONITOR_CONSOLE__SECRET_KEY is shorter than 16 characters")
        return key
    path = settings.secret_key_path or data_dir / "console.key"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        key = path.read_text().strip().encode()
    except FileExistsError:  # another process created it between the check and the open
        key = path.read_text().strip().encode()
    except OSError as exc:
        raise ConfigError(f"cannot read or create the console key {path}: {exc.strerror or exc}") from exc
    if len(key) < 16:
        raise ConfigError(f"the console key in {path} is shorter than 16 characters")
    return key


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _mac(key: bytes, purpose: str, value: str) -> str:
    return hmac.new(key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def token_hash(key: bytes, token: str) -> str:
    """What the database stores of a session token."""
    return _mac(key, "session", token)


def csrf_token(key: bytes, token: str) -> str:
    """The CSRF token of the forms of a session (or of the sign-in form, from its nonce)."""
    return _mac(key, "csrf", token)


def csrf_ok(key: bytes, token: str | None, submitted: str | None) -> bool:
    return bool(token and submitted) and hmac.compare_digest(csrf_token(key, token), submitted)
