"""int8's error per value on states with outliers: the earlier int8 (one scale per token) against the int8 that
keeps each token's 4 largest values exactly, and the bytes each stores per token.

    PYTHONPATH=src:benchmarks python benchmarks/int8_error.py --out results/int8_error.json

States: planted decoder-like ones (Gaussian features, ``--channels`` outlier channels of 20-60 on every token as
LLM.int8 finds them, and on the first token and every 16th ("delimiters") two massive activations of 800-1500,
over 1000x the median), and all-MiniLM-L6-v2's real states at 3 of 6 blocks over Rotten Tomatoes sentences (when
its package is installed): filled into a DiskStore through ``lr.recycle``, so the bytes are the store's own.
Reports per codec: the largest error on one value, the largest error over its token's median magnitude, the tokens
whose error exceeds half their median magnitude ("lost"), and bytes per token. Writes one JSON result.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

import layer_recycling as lr
from layer_recycling.stores.codecs import CODECS, decode, encode
from timing import write_result

OLD = dataclasses.replace(CODECS["int8"], writable=True)  # the earlier int8, written here only to measure it
NEW = CODECS["int8-outliers"]


def planted(entries: int, tokens: int, hidden: int, channels: int, seed: int = 0) -> list[torch.Tensor]:
    """Decoder-like states: outlier channels on every token, massive activations on the first and delimiters."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(entries):
        x = torch.randn(tokens, hidden, generator=g)
        cols = torch.arange(channels) * 37 % hidden
        signs = torch.sign(torch.randn(channels, generator=g))
        x[:, cols] += torch.empty(channels).uniform_(20, 60, generator=g) * signs
        x[::16, 101 % hidden] = 1500.0
        x[::16, 203 % hidden] = -800.0
        out.append(x)
    return out


def minilm_states(entries: int, tokens: int) -> tuple[list[torch.Tensor], float]:
    """all-MiniLM-L6-v2's states at 3 of 6 blocks, through a DiskStore(codec="int8") fill; and its bytes per token."""
    import transformers

    from layer_recycling.bench.assets import minilm_path, movie_reviews

    path = minilm_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    texts = [t for t, _ in movie_reviews()[0][:entries]]
    examples = [dict(tok(t, truncation=True, max_length=tokens)) for t in texts]
    with tempfile.TemporaryDirectory() as folder:
        rec = lr.recycle(model, at=3, store=lr.DiskStore(Path(folder) / "s", codec="int8"), tokenizer=tok)
        rec.fill(examples, progress=False)
        rec.store.compact()
        n_tokens = sum(len(e["input_ids"]) for e in examples)
        store_bytes = sum(p.stat().st_size for p in Path(folder, "s").glob("seg-*.data")) / n_tokens
        states = [rec.pipeline.bottom_states([{k: torch.tensor(v) for k, v in e.items()}], torch.device("cpu"))[0]
                  for e in examples]
    return states, store_bytes


def errors(states: list[torch.Tensor], codec) -> dict:
    """The codec's error on ``states``: largest per value, largest over its token's median |x|, tokens lost."""
    worst = worst_rel = 0.0
    lost = tokens = 0
    for x in states:
        err = (decode(*encode(x, codec, "k"), codec, None, torch.float32) - x).abs()
        median = x.abs().median(dim=1, keepdim=True).values.clamp_min(1e-12)
        worst, worst_rel = max(worst, float(err.max())), max(worst_rel, float((err / median).max()))
        lost += int((err > median / 2).any(dim=1).sum())
        tokens += x.shape[0]
    side = codec.side_bytes
    return {"max_error": worst, "max_error_over_token_median": worst_rel, "tokens_lost": lost, "tokens": tokens,
            "bytes_per_token": states[0].shape[1] + side}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--channels", type=int, nargs="+", default=[2, 6], help="outlier channels of planted states")
    ap.add_argument("--no-minilm", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/int8_error.json"))
    args = ap.parse_args(argv)
    sources = {f"planted, {c} outlier channels": (planted(args.entries, args.tokens, args.hidden, c), None)
               for c in args.channels}
    if not args.no_minilm:
        sources["MiniLM-L6 at 3 of 6 blocks"] = minilm_states(args.entries, args.tokens)
    results = {}
    for name, (states, store_bytes) in sources.items():
        results[name] = {"old int8": errors(states, OLD), "int8": errors(states, NEW)}
        if store_bytes is not None:
            results[name]["int8"]["store_data_bytes_per_token"] = store_bytes
    print("| states | codec | max error per value | max error / token median | tokens lost | bytes per token |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        for codec, e in r.items():
            print(f"| {name} | {codec} | {e['max_error']:.4g} | {e['max_error_over_token_median']:.3g} | "
                  f"{e['tokens_lost']} of {e['tokens']} | {e['bytes_per_token']} |")
    out = write_result(args.out, args, results)
    return out


if __name__ == "__main__":
    main()
