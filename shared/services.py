"""Where the broker, the database and the blob store are: settings first, else the embedded stack."""

import json
from dataclasses import dataclass
from pathlib import Path

from shared.settings import Settings, get_settings

STACK_FILE = "stack.json"


class ServiceNotConfigured(RuntimeError):
    pass


@dataclass(frozen=True)
class ServiceUrls:
    redis_url: str
    database_url: str
    blob_url: str


def read_stack_file(state_dir: Path) -> dict:
    path = state_dir / STACK_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def resolve(settings: Settings | None = None) -> ServiceUrls:
    """Explicit URLs win; what is missing comes from the running embedded stack (`biofleet up`)."""
    settings = settings or get_settings()
    stack = read_stack_file(settings.state_dir)
    urls = {}
    for name in ("redis_url", "database_url", "blob_url"):
        value = getattr(settings, name) or stack.get(name)
        if not value:
            raise ServiceNotConfigured(
                f"{name} is not set (BIOFLEET_{name.upper()}) and no embedded stack is running: run `biofleet up`"
            )
        urls[name] = value
    return ServiceUrls(**urls)
