"""Who may use the admin API: named tokens with roles, from ``SMEG_ADMIN_TOKENS`` (a
comma-separated list of ``name:role:secret``) or ``[admin.tokens.NAME]`` tables holding the
secret's SHA-256 (``role = "operator"``, ``sha256 = "…"``): a secret never sits in the file.

Roles: ``viewer`` reads; ``operator`` reads and acts; ``pii`` (added, ``operator+pii``) also sees
full addresses and bodies. A presented secret is hashed and compared with every token's hash in
constant time; the token's *name* is what every action records as ``by``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

VIEWER, OPERATOR, PII = "viewer", "operator", "pii"
BASE_ROLES = (VIEWER, OPERATOR)
ENV_VARIABLE = "SMEG_ADMIN_TOKENS"
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: A secret shorter than this is refused: it could be guessed.
MIN_SECRET = 16


@dataclass(frozen=True)
class Token:
    name: str
    roles: frozenset[str]
    digest: bytes

    def may(self, role: str) -> bool:
        """``viewer`` is implied by ``operator``; ``pii`` must be given."""
        return role in self.roles or (role == VIEWER and OPERATOR in self.roles)


def parse_roles(text: str, where: str) -> frozenset[str]:
    parts = text.split("+")
    if not parts or parts[0] not in BASE_ROLES or any(p != PII for p in parts[1:]):
        raise ValueError(f"{where}: role must be viewer or operator, optionally +pii (not {text!r})")
    return frozenset(parts)


def tokens_from(environ: Mapping[str, str], tables: Mapping[str, Any]) -> list[Token]:
    """Every configured token; ValueError names the bad one (never its secret)."""
    tokens: list[Token] = []
    for number, entry in enumerate(
        filter(None, (e.strip() for e in environ.get(ENV_VARIABLE, "").split(",")))
    ):
        where = f"{ENV_VARIABLE} entry {number + 1}"
        name, _, rest = entry.partition(":")
        role, _, secret = rest.partition(":")
        if not NAME_RE.fullmatch(name):
            raise ValueError(f"{where}: name must be 1-64 of A-Z a-z 0-9 . _ -")
        if len(secret) < MIN_SECRET:
            raise ValueError(f"{where} ({name}): the secret must be at least {MIN_SECRET} characters")
        tokens.append(Token(name, parse_roles(role, f"{where} ({name})"), digest(secret)))
    for name, table in tables.items():
        where = f"[admin.tokens.{name}]"
        if not NAME_RE.fullmatch(name) or not isinstance(table, Mapping):
            raise ValueError(f"{where}: a table named with 1-64 of A-Z a-z 0-9 . _ -")
        unknown = sorted(set(table) - {"role", "sha256"})
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: role, sha256)")
        hashed = table.get("sha256")
        if not isinstance(hashed, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", hashed):
            raise ValueError(f"{where}: sha256 must be the secret's SHA-256, 64 hex digits")
        tokens.append(Token(name, parse_roles(str(table.get("role", "")), where), bytes.fromhex(hashed)))
    names = [t.name for t in tokens]
    if len(names) != len(set(names)):
        raise ValueError(
            f"admin token {sorted(n for n in names if names.count(n) > 1)[0]!r} is configured twice"
        )
    return tokens


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def authenticate(tokens: list[Token], authorization: str | None) -> Token | None:
    """The token a ``Bearer`` header presents, or None. Every token is compared (constant time
    each), so the time taken does not say which names exist."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    presented = digest(authorization[len("Bearer ") :].strip())
    found = None
    for token in tokens:
        if hmac.compare_digest(presented, token.digest):
            found = token
    return found
