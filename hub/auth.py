"""Accounts, password checks (argon2) and bearer tokens (JWT, HS256).

The signing key comes from ``GRIDHUB_SECRET_KEY``; without it a random key is created
once in the data folder (mode 0600) so tokens survive a restart of the same install.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from hub.config import Site
from hub.models import User

log = logging.getLogger(__name__)

TOKEN_TTL_S = 12 * 3600
ALGORITHM = "HS256"
VERIFIED_CACHE = 4096  # tokens remembered as verified (cleared when full)


class AuthError(Exception):
    """Bad credentials or token."""


def load_secret(data_dir: Path, env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    if env.get("GRIDHUB_SECRET_KEY"):
        return env["GRIDHUB_SECRET_KEY"]
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


class Accounts:
    """Users of the site with their argon2 password hashes."""

    def __init__(self, site: Site, passwords: dict[str, str], secret: str) -> None:
        self._hasher = PasswordHasher()
        self._secret = secret
        self._users = {
            u.username: User(
                username=u.username, name=u.name, role=u.role, department=u.department,
                grid=u.grid, unit=u.unit,
            )
            for u in site.users
        }
        self._hashes = {
            name: pw if pw.startswith("$argon2") else self._hasher.hash(pw)
            for name, pw in passwords.items()
        }
        self._verified: dict[str, tuple[str, float]] = {}  # token -> (subject, expiry)
        # Verify against a dummy hash for unknown users so timing does not reveal names.
        self._dummy = self._hasher.hash(secrets.token_hex(16))

    def user(self, username: str) -> User | None:
        return self._users.get(username)

    def authenticate(self, username: str, password: str) -> User:
        h = self._hashes.get(username, self._dummy)
        try:
            self._hasher.verify(h, password)
        except (VerificationError, InvalidHashError) as err:
            raise AuthError("wrong username or password") from err
        user = self._users.get(username)
        if user is None:
            raise AuthError("wrong username or password")
        return user

    def issue(self, user: User, ttl_s: int = TOKEN_TTL_S) -> str:
        now = int(time.time())
        claims = {"sub": user.username, "role": user.role, "iat": now, "exp": now + ttl_s}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> User:
        # A token checked once is remembered (subject and expiry) until it expires, so a
        # console's every request does not decode and re-sign it; the user is still looked
        # up each time, so a removed user's token stops working at once.
        hit = self._verified.get(token)
        if hit is not None and hit[1] > time.time():
            sub = hit[0]
        else:
            try:
                claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM])
            except jwt.PyJWTError as err:
                raise AuthError(f"invalid token: {err}") from err
            sub = str(claims.get("sub"))
            if len(self._verified) >= VERIFIED_CACHE:
                self._verified.clear()
            self._verified[token] = (sub, float(claims.get("exp", 0)))
        user = self._users.get(sub)
        if user is None:
            raise AuthError("token for an unknown user")
        return user
