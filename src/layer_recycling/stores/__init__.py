"""Stores of per-example states: a small Protocol, and the implementations of it."""

from .memory import MemoryStore
from .protocol import Store, check_store

__all__ = ["MemoryStore", "Store", "check_store"]
