"""Stores of per-example states: a small Protocol (and the shared store's capability), and the implementations."""

from .disk import DigestMismatch, DiskFull, DiskStore, StoreCorrupted
from .memory import MemoryStore
from .null import NullStore
from .protocol import SharedStore, Store, check_store

__all__ = ["DigestMismatch", "DiskFull", "DiskStore", "MemoryStore", "NullStore", "SharedStore", "Store", "StoreCorrupted",
           "check_store"]
