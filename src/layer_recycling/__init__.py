"""layer-recycling: freeze the bottom k blocks of a model, compute their output once per input, reuse it.

    import layer_recycling as lr
    rec = lr.recycle(model, at=0.5)          # bottom half frozen, cached in a MemoryStore
    for batch in rec.loader(examples, batch_size=32, shuffle=True):
        rec(**batch).loss.backward()         # only the top runs
"""

from .fingerprint import FingerprintMismatch
from .keys import digest
from .recycle import CachedDataset, Recycled, Stats, VerifyReport, recycle
from .split import Split, resolve_level, split
from .stores import DiskFull, DiskStore, MemoryStore, Store, StoreCorrupted

__version__ = "0.1.0"

__all__ = [
    "CachedDataset", "DiskFull", "DiskStore", "FingerprintMismatch", "MemoryStore", "Recycled", "Split", "Stats",
    "Store", "StoreCorrupted", "VerifyReport", "__version__", "digest", "recycle", "resolve_level", "split",
]
