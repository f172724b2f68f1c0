"""Stores of per-example states: a small Protocol, and the implementations of it."""

from .memory import MemoryStore
from .protocol import Store, bind

__all__ = ["MemoryStore", "Store", "bind"]
