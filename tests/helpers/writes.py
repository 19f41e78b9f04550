"""The collection methods that write, for fault injection at the n-th write."""

from __future__ import annotations

from typing import Final

WRITE_METHODS: Final = frozenset(
    {"insert_one", "update_one", "update_many", "find_one_and_update", "delete_one", "delete_many"}
)
