"""layer-recycling: freeze the bottom k blocks of a model, compute their output once per input, reuse it.

    import layer_recycling as lr
    rec = lr.recycle(model, at=0.5)          # bottom half frozen, cached in a MemoryStore
    for batch in rec.loader(examples, batch_size=32, shuffle=True):
        rec(**batch).loss.backward()         # only the top runs

One module per step: surgery/split cut the model; keys, fingerprint and stores keep the states; a
``Pipeline`` owns the bottom's side (the bottom, the keys and their checks, the store): fill, loader, serve and
stack are built on its verbs; ``recycle`` assembles it and the ``Recycled`` module that holds it.
"""

from ._version import __version__
from .config import RecycleConfig
from .fill import VerifyReport
from .fingerprint import Fingerprint, FingerprintMismatch
from .keys import digest
from .columns import CachedDataset
from .model import Recycled, recycle
from .pipeline import Pipeline, Stats
from .plan import Plan, plan
from .saving import load_model_state_dict, model_state_dict
from .discover import split
from .split import Split
from .stores import DigestMismatch, DiskFull, DiskStore, MemoryStore, NullStore, SharedStore, Store, StoreCorrupted
from .surgery import resolve_at

__all__ = [
    "CachedDataset", "DigestMismatch", "DiskFull", "DiskStore", "Fingerprint", "FingerprintMismatch", "MemoryStore",
    "NullStore", "Pipeline", "Plan", "RecycleConfig", "Recycled", "SharedStore", "Split", "Stats", "Store", "StoreCorrupted", "VerifyReport",
    "__version__", "digest", "load_model_state_dict", "model_state_dict", "plan", "recycle", "resolve_at", "split",
]
