"""Opaque keyset cursors for the list routes.

encode(values) -> a URL-safe string for a tuple of str/datetime/UUID values (the sort key of the
last row of a page); decode(cursor, types) -> those values again, or 422 "bad_cursor".
page_limit(limit, most) -> limit checked against 1..most, or 422 "bad_limit".
newest_first(query, time_column, id_column, after, limit) -> the query for a page in descending
(time, id) order after the cursor's values (limit + 1 rows, to know whether a next page exists).
split_page(rows, limit, key) -> (the page's rows, next_cursor or None on the last page).
A page holds the rows strictly after the cursor in the route's order, so rows inserted during a
walk never shift it: none is skipped or repeated.
"""

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, tuple_

from api.errors import ApiError

MAX_CURSOR_CHARS = 1024
Row = TypeVar("Row")


def encode(values: tuple[Any, ...]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else str(v) for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode()).decode().rstrip("=")


def _bad() -> ApiError:
    return ApiError(422, "bad_cursor", "cursor is not one this API returned")


def decode(cursor: str, types: tuple[type, ...]) -> tuple[Any, ...]:
    """The values of a cursor, converted to types (str, datetime or uuid.UUID)."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise _bad()
    try:
        plain = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad() from None
    if not isinstance(plain, list) or len(plain) != len(types) or not all(isinstance(v, str) for v in plain):
        raise _bad()
    try:
        return tuple(
            datetime.fromisoformat(v) if t is datetime else uuid.UUID(v) if t is uuid.UUID else v
            for v, t in zip(plain, types, strict=True)
        )
    except ValueError:
        raise _bad() from None


def page_limit(limit: int, most: int) -> int:
    if not 1 <= limit <= most:
        raise ApiError(422, "bad_limit", f"limit must be between 1 and {most}")
    return limit


def newest_first(query: Select, time_column: Any, id_column: Any, after: tuple | None, limit: int) -> Select:
    if after is not None:
        query = query.where(tuple_(time_column, id_column) < tuple_(*after))
    return query.order_by(time_column.desc(), id_column.desc()).limit(limit + 1)


def split_page(rows: Sequence[Row], limit: int, key: Callable[[Row], tuple[Any, ...]]) -> tuple[list[Row], str | None]:
    page = list(rows[:limit])
    return page, encode(key(page[-1])) if len(rows) > limit else None
