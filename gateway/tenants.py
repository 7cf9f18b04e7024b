"""Tenants of the gateway: API keys (stored as sha256 hashes only) and their dollar caps.

The table comes from a TOML file (ROUTENLP_TENANTS or <state>/tenants.toml) or, for containers,
the same table as JSON in ROUTENLP_TENANTS_JSON:

    [tenants.acme]
    keys = ["sha256:9f86d0..."]     # hashes of the tenant's keys
    revoked = ["sha256:2c26b4..."]  # keys that used to work: answered 401 "revoked"
    daily_usd = 5.0                 # cap per UTC day
    monthly_usd = 100.0             # optional cap per UTC month

`python -m gateway.tenants new acme --daily-usd 5` prints a fresh key (once) and the block to
paste. API keys are random 256-bit tokens, so a plain sha256 is enough to keep the file harmless.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import secrets
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_TENANTS_FILE = "ROUTENLP_TENANTS"
ENV_TENANTS_JSON = "ROUTENLP_TENANTS_JSON"
TENANTS_FILE = "tenants.toml"  # in the state folder
HASH_PREFIX = "sha256:"
logger = logging.getLogger(__name__)
KEY_PREFIX = "rnlp-"


class TenantConfigError(ValueError):
    """The tenant table is malformed; the message names the tenant and the field."""


class AuthError(Exception):
    """The request's key is missing, unknown or revoked (HTTP 401)."""


@dataclass(frozen=True)
class Tenant:
    name: str
    daily_usd: float
    monthly_usd: float | None = None

    def caps(self) -> dict[str, float]:
        """Cap per period kind ("day", "month") in dollars."""
        caps = {"day": self.daily_usd}
        if self.monthly_usd is not None:
            caps["month"] = self.monthly_usd
        return caps


def hash_key(api_key: str) -> str:
    return HASH_PREFIX + hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def _cap(name: str, entry: Mapping[str, Any], field: str, required: bool) -> float | None:
    value = entry.get(field)
    if value is None:
        if required:
            raise TenantConfigError(f"tenant {name!r}: {field} is required (dollars per period)")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TenantConfigError(f"tenant {name!r}: {field} must be a non-negative number of dollars, got {value!r}")
    return float(value)


def _hashes(name: str, entry: Mapping[str, Any], field: str) -> list[str]:
    values = entry.get(field, [])
    if not isinstance(values, list) or not all(isinstance(v, str) and v.startswith(HASH_PREFIX) and len(v) == len(HASH_PREFIX) + 64 for v in values):
        raise TenantConfigError(f"tenant {name!r}: {field} must be a list of '{HASH_PREFIX}<64 hex digits>' (python -m gateway.tenants new)")
    return values


class TenantTable:
    def __init__(self, tenants: Mapping[str, Tenant], keys: Mapping[str, str], revoked: Mapping[str, str]) -> None:
        self.tenants = dict(tenants)
        self._keys = dict(keys)  # key hash -> tenant name
        self._revoked = dict(revoked)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "tenant table") -> "TenantTable":
        table = data.get("tenants", {})
        if not isinstance(table, Mapping):
            raise TenantConfigError(f"{where}: 'tenants' must be a table of tenants")
        tenants, keys, revoked = {}, {}, {}
        for name, entry in table.items():
            if not isinstance(entry, Mapping):
                raise TenantConfigError(f"{where}: tenant {name!r} must be a table")
            tenants[name] = Tenant(name, _cap(name, entry, "daily_usd", True), _cap(name, entry, "monthly_usd", False))
            for digest in _hashes(name, entry, "keys"):
                if digest in keys and keys[digest] != name:
                    raise TenantConfigError(f"{where}: one key is listed for both {keys[digest]!r} and {name!r}")
                keys[digest] = name
            revoked.update({digest: name for digest in _hashes(name, entry, "revoked")})
        return cls(tenants, {k: v for k, v in keys.items() if k not in revoked}, revoked)

    @classmethod
    def load(cls, state_dir: Path, environ: Mapping[str, str] = os.environ) -> "TenantTable":
        """ROUTENLP_TENANTS_JSON, else the file ROUTENLP_TENANTS, else <state_dir>/tenants.toml;
        none of them: an empty table (every request is refused with 401)."""
        inline = environ.get(ENV_TENANTS_JSON, "").strip()
        if inline:
            try:
                return cls.from_mapping(json.loads(inline), ENV_TENANTS_JSON)
            except json.JSONDecodeError as err:
                raise TenantConfigError(f"{ENV_TENANTS_JSON} is not JSON: {err}") from None
        path = tenants_path(state_dir, environ)
        if not path.exists():
            return cls({}, {}, {})
        try:
            return cls.from_mapping(tomllib.loads(path.read_text()), str(path))
        except tomllib.TOMLDecodeError as err:
            raise TenantConfigError(f"{path}: {err}") from None

    def authenticate(self, api_key: str | None) -> Tenant:
        if not api_key:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        digest = hash_key(api_key)
        if digest in self._revoked:
            raise AuthError("API key revoked")
        name = self._keys.get(digest)
        if name is None:
            hint = "" if self.tenants else " (no tenants configured: see `python -m gateway.tenants new`)"
            raise AuthError("invalid API key" + hint)
        return self.tenants[name]


def tenants_path(state_dir: Path, environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get(ENV_TENANTS_FILE, "").strip() or Path(state_dir) / TENANTS_FILE)


class TenantSource:
    """The tenant table, loaded again when its file changes (checked at most every `recheck_s`),
    so a key added or revoked in tenants.toml takes effect without a restart. A file that no
    longer parses keeps the last good table (and the error is logged)."""

    def __init__(self, state_dir: Path, environ: Mapping[str, str] = os.environ, recheck_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.state_dir, self.environ, self.recheck_s, self.clock = Path(state_dir), environ, recheck_s, clock
        self._table = TenantTable.load(self.state_dir, environ)  # a broken table at start fails loudly
        self._stamp = self._file_stamp()
        self._checked = clock()

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.environ.get(ENV_TENANTS_JSON, "").strip():
            return None  # the environment cannot change under a running process
        try:
            stat = tenants_path(self.state_dir, self.environ).stat()
        except FileNotFoundError:
            return (0, 0)
        return (stat.st_mtime_ns, stat.st_size)

    def table(self) -> TenantTable:
        now = self.clock()
        if now - self._checked >= self.recheck_s:
            self._checked = now
            stamp = self._file_stamp()
            if stamp != self._stamp:
                try:
                    self._table = TenantTable.load(self.state_dir, self.environ)
                    self._stamp = stamp
                except TenantConfigError as err:
                    logger.error("tenant table not reloaded, the previous one stays: %s", err)
        return self._table


def new_tenant_block(name: str, daily_usd: float, monthly_usd: float | None = None) -> tuple[str, str]:
    """A fresh key and the TOML block that admits it."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    lines = [f"[tenants.{json.dumps(name)}]", f'keys = ["{hash_key(key)}"]', f"daily_usd = {daily_usd!r}"]
    if monthly_usd is not None:
        lines.append(f"monthly_usd = {monthly_usd!r}")
    return key, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.tenants", description="make an API key for a gateway tenant")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="print a new key (shown once) and the tenants.toml block holding its hash")
    new.add_argument("name")
    new.add_argument("--daily-usd", type=float, required=True)
    new.add_argument("--monthly-usd", type=float, default=None)
    args = parser.parse_args(argv)
    key, block = new_tenant_block(args.name, args.daily_usd, args.monthly_usd)
    print(f"# API key for {args.name} (stored nowhere; give it to the tenant): {key}")
    print(block, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
