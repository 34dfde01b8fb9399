"""The event and catalog schemas every source is mapped onto, and the names of their columns.

A *raw* table is what a loader yields: every column a string (or null), exactly as the log had it,
so that validation, not parsing, decides what is wrong with a row and can say so. A *valid* event
adds typed columns (``ts_ms``, ``price_value``) that later stages read.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "search")
# Funnel order: a later stage implies interest at least as strong as an earlier one.
FUNNEL_STAGE: dict[str, int] = {"view": 0, "click": 1, "add_to_cart": 2, "purchase": 3}
INTERACTION_TYPES: tuple[str, ...] = tuple(FUNNEL_STAGE)

# Raw event columns, all strings. ``item_id`` is empty for search events; ``query`` only for them.
RAW_EVENT_COLUMNS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "event_type",
    "timestamp",  # ISO-8601 (with or without zone; naive means UTC) or unix seconds / milliseconds
    "session_id",
    "query",
    "price",
    "quantity",
)
RAW_CATALOG_COLUMNS: tuple[str, ...] = ("item_id", "title", "category", "brand", "price")
CATEGORY_SEPARATOR = ">"  # category paths look like "Home > Kitchen > Knives"

# Added to every raw row by the reader so that a rejected row can be traced to its file and line.
SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"
REASON = "reason"  # on rejects: why the row was quarantined


def raw_schema(columns: tuple[str, ...]) -> pa.Schema:
    """Arrow schema of a raw table: the given string columns plus provenance and a preset reason."""
    fields = [pa.field(c, pa.string()) for c in columns]
    fields += [
        pa.field(SOURCE_FILE, pa.string()),
        pa.field(SOURCE_ROW, pa.int64()),
        # Set by a loader that already knows a row is bad (a malformed CSV line, a cancelled
        # invoice); null otherwise. Validation keeps a preset reason rather than overwrite it.
        pa.field(REASON, pa.string()),
    ]
    return pa.schema(fields)


RAW_EVENT_SCHEMA = raw_schema(RAW_EVENT_COLUMNS)
RAW_CATALOG_SCHEMA = raw_schema(RAW_CATALOG_COLUMNS)
