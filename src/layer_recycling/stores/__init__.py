"""Stores of per-example states: a small Protocol, and the implementations of it."""

from .disk import DigestMismatch, DiskFull, DiskStore, StoreCorrupted
from .memory import MemoryStore
from .null import NullStore
from .protocol import Store, check_store

__all__ = ["DigestMismatch", "DiskFull", "DiskStore", "MemoryStore", "NullStore", "Store", "StoreCorrupted",
           "check_store"]
