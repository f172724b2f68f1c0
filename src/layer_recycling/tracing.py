"""Run a transformers model once on an example made up from its config and record what its forward calls, in
order: which lists of blocks it runs (each item once, in order), and which modules run before and after them.

``discover`` cuts and checks the lists found here; nothing here changes the model (its hooks are removed, its
train/eval modes restored).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .checks import eval_mode

TOKENS = 10  # the made-up example's longest row; the second row is 3 tokens shorter (right-padded)
IMAGE = 32  # pixels per side when the config names no image size


@dataclasses.dataclass
class Trace:
    """What one forward of the base model ran. Paths are dotted, inside ``model.base_model``."""

    lists: dict[str, int]  # block list path -> its length: lists of composite blocks
    items: dict[str, list[int]]  # block list path -> the indices of its items, in the order they ran
    start: dict[str, int]  # module path -> the step of its first call
    end: dict[str, int]  # module path -> the step its last call returned

    def candidates(self) -> list[str]:
        """Lists whose items ran each once, in order, inside no other such list: longest, then outermost first."""
        ordered = [p for p, n in self.lists.items() if self.items[p] == list(range(n))]
        outer = [p for p in ordered if not any(p.startswith(q + ".") for q in ordered)]
        return sorted(outer, key=lambda p: (-self.lists[p], p.count(".")))

    def passed_over(self) -> list[str]:
        """Why each other list that ran (and sits inside no candidate) is not one."""
        outer = self.candidates()
        return [f"{p!r}: the forward ran its items {self.items[p][:8]}, not each once in order"
                for p in self.lists if p not in outer and self.items[p] and self.items[p] != list(range(self.lists[p]))
                and not any(p.startswith(q + ".") for q in outer)]

    def around(self, base: nn.Module, path: str) -> tuple[list[str], list[str]]:
        """(modules that ran before the first block, modules that started after the last block returned): the
        siblings of the block list and of each module above it, as dotted paths."""
        first, last = self.start[f"{path}.0"], self.end[f"{path}.{self.lists[path] - 1}"]
        before, after, owner, prefix = [], [], base, ""
        for part in path.split("."):
            for name in owner._modules:
                q = f"{prefix}{name}"
                if name == part or q not in self.start:
                    continue
                if self.end[q] < first:
                    before.append(q)
                elif self.start[q] > last:
                    after.append(q)
            owner, prefix = getattr(owner, part), f"{prefix}{part}."
        return before, after


def trace(model: nn.Module, batch: dict[str, torch.Tensor]) -> Trace:
    """Run ``model`` on ``batch`` (eval mode, no grad) with hooks on every module of its base model.

    Raises:
        ValueError: the model fails on the batch (the message names its shapes and the error).
    """
    base = model.base_model
    lists = {p: len(m) for p, m in base.named_modules() if p and _composite(m)}
    t = Trace(lists=lists, items={p: [] for p in lists}, start={}, end={})
    step = [0]

    def before(path: str):
        def hook(*_):
            step[0] += 1
            t.start.setdefault(path, step[0])
            owner, _, index = path.rpartition(".")
            if owner in t.items and index.isdigit():
                t.items[owner].append(int(index))
        return hook

    def after(path: str):
        def hook(*_):
            step[0] += 1
            t.end[path] = step[0]
        return hook

    modules = [(p, m) for p, m in base.named_modules(remove_duplicate=False) if p]
    handles = [m.register_forward_pre_hook(before(p)) for p, m in modules]
    handles += [m.register_forward_hook(after(p)) for p, m in modules]
    try:
        with torch.no_grad(), eval_mode(model):
            model(**batch)
    except Exception as err:  # noqa: BLE001 - said with what was run and what to do
        shapes = ", ".join(f"{n} {tuple(v.shape)}" for n, v in batch.items())
        raise ValueError(
            f"{type(model).__name__} (model type {model.config.model_type!r}) is not in layer_recycling's "
            f"architecture table, and it fails on the example made up from its config to find its blocks ({shapes}): "
            f"{type(err).__name__}: {err}. Name its block list with blocks='<dotted.path>' (the split then checks "
            f"itself on its first batch), or add an entry to layer_recycling.arch.TABLE"
        ) from err
    finally:
        for h in handles:
            h.remove()
    return t


def _composite(m: nn.Module) -> bool:
    # A list of blocks, not of torch.nn layers (a Sequential of conv, norm, activation is one block).
    return type(m) in (nn.ModuleList, nn.Sequential) and len(m) >= 2 and all(
        not type(b).__module__.startswith("torch.nn") for b in m)


def synthetic(model: nn.Module) -> dict[str, torch.Tensor]:
    """Two examples of the model's main input made up from its config: token ids (rows of ``TOKENS`` and
    ``TOKENS - 3`` ids, right-padded, with the mask) or pixel values of the config's image size.

    Raises:
        ValueError: another kind of input (audio), which the library does not make up.
    """
    config, name = model.config, getattr(model, "main_input_name", "input_ids")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    if name == "input_ids":
        return {n: v.to(device) for n, v in _token_ids(config, g).items()}
    if name == "pixel_values":
        size = getattr(config, "image_size", IMAGE)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        pixels = torch.randn(2, getattr(config, "num_channels", 3), h, w, generator=g)
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        return {"pixel_values": pixels.to(device=device, dtype=dtype)}
    raise ValueError(
        f"{type(model).__name__} (model type {config.model_type!r}) is not in layer_recycling's architecture "
        f"table, and its input {name!r} is not one the library makes up to find and check a split (token ids or "
        f"pixel values). Name its block list with blocks='<dotted.path>' (the split then checks itself on its "
        f"first batch), or add an entry to layer_recycling.arch.TABLE"
    )


def _token_ids(config, g: torch.Generator) -> dict[str, torch.Tensor]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    pad = getattr(text, "pad_token_id", None)
    pad = pad if isinstance(pad, int) else 0
    ids = torch.randint(4, max(5, min(text.vocab_size, 1000)), (2, TOKENS), generator=g)
    ids[ids == pad] = 4 if pad != 4 else 5  # real tokens are never the pad id
    mask = torch.ones(2, TOKENS, dtype=torch.long)
    mask[1, TOKENS - 3 :], ids[1, TOKENS - 3 :] = 0, pad
    return {"input_ids": ids, "attention_mask": mask}
