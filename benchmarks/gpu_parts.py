"""One part of gpu_check.py: one model at one level, its settings built and timed in interleaved rounds, in a budget."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import torch

import layer_recycling as lr
from gpu_models import Source, examples, padded

CODECS = ("float16", "int8", "float32")  # the first is timed for the fill and used for (d) and serving
COLUMNS = ("a_over_c16", "b_over_c16", "c16_over_d", "c8_over_d", "c32_over_d", "fill_rate_vs_bare_bottom",
           "inference_full_over_hits")


class OutOfTime(Exception):
    """A part spent its budget between two phases; the message says after which."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak device memory of one call (None off CUDA, where torch does not count it)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    return torch.cuda.max_memory_allocated(device) / 2**20


def ratios(med: dict[str, float], fill_s: float, bare_bottom_s: float) -> dict[str, float]:
    return {
        "a_over_c16": med["a_full"] / med["c_recycled_float16"],
        "b_over_c16": med["b_frozen_no_cache"] / med["c_recycled_float16"],
        "c16_over_d": med["c_recycled_float16"] / med["d_top_on_device"],
        "c8_over_d": med["c_recycled_int8"] / med["d_top_on_device"],
        "c32_over_d": med["c_recycled_float32"] / med["d_top_on_device"],
        "fill_rate_vs_bare_bottom": bare_bottom_s / fill_s,
        "inference_full_over_hits": med["full_forward"] / med["recycled_all_hits"],
    }


def optimizer_step(forward: Callable[[], torch.Tensor], params: list) -> Callable[[], None]:
    """A training step: ``forward()``'s loss backward, AdamW on ``params``."""
    opt = torch.optim.AdamW(params, lr=1e-5)

    def run() -> None:
        forward().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return run


def trainable(model: torch.nn.Module) -> list:
    return [p for p in model.parameters() if p.requires_grad]


class Part:
    """The settings of one model at one level, and what was measured of them so far (``result()``)."""

    def __init__(self, source: Source, at: float, args, device: torch.device, folder: Path, seconds: float):
        self.source, self.at, self.args, self.device, self.folder = source, at, args, device, folder
        self.seconds, self.started = seconds, time.monotonic()
        self.mark = self.started
        self.config = source.config()
        self.of = self.config.num_hidden_layers
        self.blocks = lr.resolve_at(at, self.of)
        self.rounds, self.cut, self.recs, self.measured = 0, None, {}, {}

    def over(self) -> bool:
        return time.monotonic() - self.started > self.seconds

    def checkpoint(self, done: str) -> None:
        """Record how long ``done`` took; stop the part here if its budget is spent."""
        now = time.monotonic()
        self.measured.setdefault("phases_s", {})[done] = now - self.mark
        self.mark = now
        if self.over():
            raise OutOfTime(f"budget spent after {done}")

    def run(self) -> None:
        self.build()
        self.checkpoint("building the models")
        self.time_fill()
        self.checkpoint("the fill")
        steps, serving = self.settings()
        self.measured["peak_mb"] = {k: peak_mb(fn, self.device) for k, fn in steps.items()}  # also the warm-up
        self.checkpoint("the warm-up")
        self.time_rounds(steps, serving)
        self.measured["phases_s"]["the rounds"] = time.monotonic() - self.mark

    def build(self) -> None:
        make, dev, args, config = self.source.maker(), self.device, self.args, self.config
        self.data = examples(args.batch * args.batches, args.tokens, config.vocab_size)
        self.batches = [padded(self.data[i : i + args.batch], config.pad_token_id, dev)
                        for i in range(0, len(self.data), args.batch)]
        self.full = make().to(dev).train()
        self.frozen = lr.recycle(make().to(dev), at=self.at, store=None).train()
        self.bare = lr.recycle(make().to(dev), at=self.at, store=None).eval()
        for codec in CODECS:
            store = lr.DiskStore(self.folder / codec, codec=codec)
            self.recs[codec] = lr.recycle(make().to(dev), at=self.at, store=store).train()
        self.measured["tokens_mean"] = sum(len(r["input_ids"]) for r in self.data) / len(self.data)
        self.measured["attention"] = getattr(self.full.config, "_attn_implementation", None)  # sdpa, eager, ...

    def time_fill(self) -> None:
        """The float16 fill against the bare bottom's forward on the same batches (warmed up first)."""
        inputs = [{k: v for k, v in b.items() if k != "labels"} for b in self.batches]
        self.bare.pipeline.run_bottom(inputs[0])
        bare_s = timed(lambda: [self.bare.pipeline.run_bottom(b) for b in inputs], self.device)
        fill = lambda codec: self.recs[codec].fill(self.data, batch_size=self.args.batch, progress=False)  # noqa: E731
        self.measured["fill_s"], self.measured["bare_bottom_s"] = timed(lambda: fill("float16"), self.device), bare_s
        for other in CODECS[1:]:
            fill(other)

    def settings(self) -> tuple[dict[str, Callable[[], None]], dict[str, Callable[[], object]]]:
        """({step name: one training step}, {serving name: one forward}); recycled steps draw batches in turn."""
        loaders = {c: r.loader(self.data, batch_size=self.args.batch, shuffle=True, seed=0, progress=False,
                               device=self.device) for c, r in self.recs.items()}
        streams = {c: iter(()) for c in loaders}

        def next_batch(codec: str) -> dict:
            batch = next(streams[codec], None)
            if batch is None:
                streams[codec] = iter(loaders[codec])
                batch = next(streams[codec])
            return batch

        rec, full, frozen, first = self.recs["float16"], self.full, self.frozen, self.batches[0]
        cached = next(iter(loaders["float16"]))
        steps = {
            "a_full": optimizer_step(lambda: full(**first).loss, list(full.parameters())),
            "b_frozen_no_cache": optimizer_step(lambda: frozen(**first).loss, trainable(frozen)),
            **{f"c_recycled_{c}": optimizer_step(lambda c=c: self.recs[c](**next_batch(c)).loss, trainable(r))
               for c, r in self.recs.items()},
            "d_top_on_device": optimizer_step(lambda: rec.top(cached["states"], attention_mask=cached["attention_mask"],
                                                              labels=cached["labels"]).loss, trainable(rec)),
        }
        return steps, {"full_forward": lambda: full(**first), "recycled_all_hits": lambda: rec(**first)}

    def time_rounds(self, steps: dict, serving: dict) -> None:
        """Rounds alternate the steps' order; the serving forwards run in eval mode without gradients."""
        times: dict[str, list[float]] = {k: [] for k in [*steps, *serving]}
        calls = self.bottom_calls()
        for r in range(self.args.rounds):
            if r and self.over():
                self.cut = f"budget spent after {r} of {self.args.rounds} rounds"
                break
            for k in (list(steps) if r % 2 == 0 else list(reversed(steps))):
                times[k].append(timed(steps[k], self.device))
            self.full.eval(), self.recs["float16"].eval()
            with torch.no_grad():
                for k, fn in serving.items():
                    times[k].append(timed(fn, self.device))
            self.full.train(), self.recs["float16"].train()
            self.rounds = r + 1
        if self.bottom_calls() != calls:
            raise RuntimeError(f"a recycled step ran the bottom ({self.bottom_calls() - calls} calls after the fill): "
                               f"its batches missed the store, so (c) timed the bottom too")
        med = {k: statistics.median(v) for k, v in times.items()}
        self.measured["median_s"] = med
        self.measured["ratios"] = ratios(med, self.measured["fill_s"], self.measured["bare_bottom_s"])

    def bottom_calls(self) -> int:
        return sum(r.stats.bottom_calls for r in self.recs.values())

    def close(self) -> None:
        for rec in self.recs.values():
            rec.store.close()

    def result(self) -> dict:
        return {"model": self.source.name, "weights": self.source.weights, "at": self.at, "blocks": self.blocks,
                "of": self.of, "budget_s": self.seconds, "spent_s": time.monotonic() - self.started,
                "rounds": self.rounds, "cut": self.cut, **self.measured}
