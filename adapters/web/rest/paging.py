"""PromptRails' pagination: ``?page=`` (1-based) and ``?limit=``, clamped as its emulator does."""

from __future__ import annotations

from aiohttp import web

from ..errors import bad_request

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
"""PromptRails' emulator clamps ``limit`` outside 1..100 to 20; so do we."""
MAX_OFFSET = 2**53


def page_offset(page: int, limit: int) -> int:
    """Where ``page`` starts. Capped: a page past the end is empty however far past it is, and
    the database's integers are 64-bit (``?page=99999999999999999999`` must not overflow them)."""
    return min((page - 1) * limit, MAX_OFFSET)


def pagination(request: web.Request) -> tuple[int, int]:
    """``page`` (1-based) and ``limit`` from the query string."""
    values = []
    for key, default in (("page", 1), ("limit", DEFAULT_PAGE_SIZE)):
        raw = request.query.get(key, "")
        try:
            values.append(int(raw) if raw else default)
        except ValueError:
            raise bad_request(f"{key} must be an integer") from None
    page, limit = values
    if page < 1:
        page = 1
    if not 1 <= limit <= MAX_PAGE_SIZE:
        limit = DEFAULT_PAGE_SIZE
    return page, limit
