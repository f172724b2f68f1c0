"""layer-recycling: freeze the bottom k blocks of a model, compute their output once per input, reuse it.

    import layer_recycling as lr
    rec = lr.recycle(model, at=0.5)          # bottom half frozen, cached in a MemoryStore
    for batch in rec.loader(examples, batch_size=32, shuffle=True):
        rec(**batch).loss.backward()         # only the top runs

The pipeline, one module each: split -> keys -> fingerprint -> stores -> fill -> data/loader -> serve -> model.
"""

from .config import RecycleConfig
from .fill import VerifyReport
from .fingerprint import Fingerprint, FingerprintMismatch
from .keys import digest
from .loader import CachedDataset
from .model import Recycled, Stats, recycle
from .split import Split, resolve_at, resolve_level, split
from .stores import DiskFull, DiskStore, MemoryStore, NullStore, Store, StoreCorrupted

__version__ = "0.1.0"

__all__ = [
    "CachedDataset", "DiskFull", "DiskStore", "Fingerprint", "FingerprintMismatch", "MemoryStore", "NullStore",
    "RecycleConfig", "Recycled", "Split", "Stats", "Store", "StoreCorrupted", "VerifyReport", "__version__",
    "digest", "recycle", "resolve_at", "resolve_level", "split",
]
