"""Many processes (torchrun / torch.distributed): each rank fills a share of the keys, and reads a share of each epoch.

Ranks see the same examples in the same order; shares are deterministic, so no rank ever sends keys to another.
"""

from __future__ import annotations

import heapq
import warnings
from typing import Any, Sequence

import torch


def active_group(group: Any = None) -> tuple[Any, int, int] | None:
    """(group, rank, world size) of an initialised process group with more than one rank, else None."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size(group)
    return (group, dist.get_rank(group), world) if world > 1 else None


def partition(lengths: Sequence[int], world: int) -> list[list[int]]:
    """Indices of ``lengths`` for each of ``world`` ranks, balanced by token count, the same on every rank.

    Longest first, each to the rank with the fewest tokens so far (ties: the lower rank): within one longest
    item of the best split, whatever the order of lengths.
    """
    shares: list[list[int]] = [[] for _ in range(world)]
    load = [(0, r) for r in range(world)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        tokens, r = heapq.heappop(load)
        shares[r].append(i)
        heapq.heappush(load, (tokens + lengths[i], r))
    return [sorted(s) for s in shares]


def share(pending: dict[str, dict], lengths: dict[str, int], rank: int, world: int) -> dict[str, dict]:
    """This rank's part of ``pending`` (key -> inputs): keys sorted first, so every rank cuts the same way."""
    keys = sorted(pending)
    mine = partition([lengths[k] for k in keys], world)[rank]
    return {keys[i]: pending[keys[i]] for i in mine}


def barrier(group: Any) -> None:
    torch.distributed.barrier(group)


def broadcast(value: Any, group: Any, src: int = 0) -> Any:
    """``value`` of rank ``src`` of ``group`` (its own numbering, not the global one) on every rank of it (a small
    picklable object: a snapshot name, a count)."""
    box = [value]
    dist = torch.distributed
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, src) if group is not None else src, group=group)
    return box[0]


def gather(value: Any, group: Any) -> list[Any]:
    """Every rank's ``value`` (small and picklable), in rank order, on every rank."""
    values: list[Any] = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(values, value, group=group)
    return values


def check_same(value: str, group: Any, what: str, fix: str) -> None:
    """Refuse, on every rank alike, when the ranks of ``group`` hold different ``value``s (digests of what each
    passed: ``what`` says what; ``fix``, why it matters and what to do).

    Raises:
        ValueError: naming the ranks that differ from rank 0.
    """
    values = gather(value, group)
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise ValueError(f"rank(s) {differ} of the process group passed other {what} than rank 0: {fix}")


def warn_unshared(store: Any) -> None:
    warnings.warn(
        f"{store!r} lives in one process: in a process group every rank fills all of its examples. Use a "
        f"DiskStore on a directory all ranks share to split the fill between them",
        stacklevel=4,
    )
