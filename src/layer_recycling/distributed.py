"""Many processes (torchrun / torch.distributed): each rank fills the keys it owns, and reads a share of each epoch.

Ranks see the same examples in the same order; shares are deterministic, so no rank ever sends keys to another.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch


def active_group(group: Any = None) -> tuple[Any, int, int] | None:
    """(group, rank, world size) of an initialised process group with more than one rank, else None."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size(group)
    return (group, dist.get_rank(group), world) if world > 1 else None


def owned(rank: int, world: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``mine(pending)``: the keys of ``pending`` (key -> inputs) that ``rank`` computes. A key belongs to the rank
    its digest names (keys are uniform digests, so shares are even), whatever chunk or order it comes in: each
    rank sees its own uncommitted entries, so a key repeated later is never computed twice."""
    return lambda pending: {k: v for k, v in pending.items() if int(k[:8], 16) % world == rank}


def together(ranks: tuple[Any, int, int] | None, step: Callable[[], int]) -> int:
    """``step()`` on every rank; when it raises on one, every rank raises (the others would wait for it forever).

    Raises:
        the failing rank's own error there; RuntimeError naming that rank and its error on the others.
    """
    if ranks is None:
        return step()
    try:
        out, error = step(), None
    except Exception as err:  # noqa: BLE001 - re-raised below, on this rank and (named) on every other
        out, error = 0, err
    said = gather(None if error is None else f"{type(error).__name__}: {error}", ranks[0])
    if error is not None:
        raise error
    failed = [(r, e) for r, e in enumerate(said) if e]
    if failed:
        raise RuntimeError(f"rank {failed[0][0]} of the process group failed during the fill, so every rank stops: "
                           f"{failed[0][1]}")
    return out


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
