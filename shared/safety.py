"""Refuse to run with a default secret next to a real (not embedded) Redis or Postgres.

embedded(url) -> True for an unset URL (the embedded stack), a Unix socket or a loopback host.
default_secrets(settings, names) -> the settings among names still at their default value.
refuse_default_secrets(settings, component, names) -> None, or UnsafeSettings naming each setting
    to set, when Redis or Postgres is not embedded. A name that is not a setting is skipped.
"""

import ipaddress
from urllib.parse import parse_qs, urlparse

from shared.settings import Settings

LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


class UnsafeSettings(RuntimeError):
    """A default secret with real services: the message names the settings to set."""


def embedded(url: str | None) -> bool:
    """True for a URL only this machine can reach: unset, a Unix socket or a loopback address."""
    if not url:
        return True
    parsed = urlparse(url)
    if parsed.scheme in ("unix", "redis+socket"):
        return True
    host = parsed.hostname
    if not host:  # postgresql://user@/db?host=/run/postgresql: a Unix socket, or libpq's default
        sockets = parse_qs(parsed.query).get("host", [""])
        return all(not value or value.startswith("/") for value in sockets)
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_secrets(settings: Settings, names: tuple[str, ...]) -> list[str]:
    fields = type(settings).model_fields
    return [name for name in names if name in fields and getattr(settings, name) == fields[name].default]


def refuse_default_secrets(settings: Settings, component: str, names: tuple[str, ...]) -> None:
    """Raise UnsafeSettings when one of names is at its default and Redis or Postgres is real."""
    if embedded(settings.redis_url) and embedded(settings.database_url):
        return
    found = default_secrets(settings, names)
    if found:
        wanted = ", ".join(f"BIOFLEET_{name.upper()}" for name in found)
        raise UnsafeSettings(
            f"{component} will not start with the default {', '.join(found)} while Redis or Postgres is not "
            f"the embedded one: set {wanted}"
        )
