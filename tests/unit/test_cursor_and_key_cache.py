"""api/cursor.py (opaque keyset cursors) and api/keycache.py (the in-process API key cache)."""

import time
import uuid
from datetime import UTC, datetime

import pytest

from api import cursor
from api.errors import ApiError
from api.keycache import KeyCache


def test_a_cursor_gives_back_its_values():
    at, job_id = datetime(2026, 12, 3, 9, 30, 1, 123456, tzinfo=UTC), uuid.uuid4()
    text = cursor.encode((at, job_id))
    assert text.isascii() and "=" not in text
    assert cursor.decode(text, (datetime, uuid.UUID)) == (at, job_id)
    assert cursor.decode(cursor.encode(("subject-1",)), (str,)) == ("subject-1",)


@pytest.mark.parametrize("text", ["", "zz", "bm9wZQ", cursor.encode(("a", "b")), cursor.encode(("x",)), "A" * 2000])
def test_a_cursor_this_api_did_not_make_is_bad_cursor(text):
    with pytest.raises(ApiError) as caught:
        cursor.decode(text, (datetime, uuid.UUID))
    assert (caught.value.status, caught.value.code) == (422, "bad_cursor")


def test_page_limit_bounds():
    assert cursor.page_limit(1, 10) == 1 and cursor.page_limit(10, 10) == 10
    for bad in (0, 11, -1):
        with pytest.raises(ApiError) as caught:
            cursor.page_limit(bad, 10)
        assert caught.value.code == "bad_limit"


def test_the_key_cache_forgets_after_its_window_and_can_be_off():
    tenant = uuid.uuid4()
    cache = KeyCache(0.05)
    assert cache.get("h") is None
    cache.put("h", tenant)
    assert cache.get("h") == tenant
    time.sleep(0.06)
    assert cache.get("h") is None
    off = KeyCache(0)
    off.put("h", tenant)
    assert off.get("h") is None
