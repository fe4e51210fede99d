"""KeyCache(ttl_s): the tenant of each API key looked up in the last ttl_s seconds, in-process.

get(key_hash) -> tenant id or None; put(key_hash, tenant_id). Only known keys are kept (a new key
works at once); a revoked key keeps working in this process for at most ttl_s (settings.key_cache_s;
0 turns the cache off). Entries are held by the key's sha256, never the key.
"""

import threading
import time
import uuid

MAX_ENTRIES = 10_000  # past this the cache starts over


class KeyCache:
    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, uuid.UUID]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> uuid.UUID | None:
        if self.ttl_s <= 0:
            return None
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if time.monotonic() >= entry[0]:
            with self._lock:
                self._entries.pop(key_hash, None)
            return None
        return entry[1]

    def put(self, key_hash: str, tenant_id: uuid.UUID) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key_hash] = (time.monotonic() + self.ttl_s, tenant_id)
