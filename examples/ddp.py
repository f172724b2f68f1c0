"""Fill and train on many processes: every rank fills a share of the cache, then trains the top under DDP.

    torchrun --nproc_per_node=2 examples/ddp.py --store cache/ddp                # one machine, 2 processes
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 examples/ddp.py --store /shared/cache
The store must sit on a directory every rank can reach (a shared filesystem across machines).
"""

from __future__ import annotations

import argparse

import torch
import transformers

import layer_recycling as lr


def model_and_examples(name: str, count: int):
    """The packaged all-MiniLM-L6-v2 on Rotten Tomatoes, or (``tiny``) a random 4-block BERT on random ids."""
    if name == "tiny":
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                         intermediate_size=37, num_labels=2)
        g = torch.Generator().manual_seed(1)
        lengths = torch.randint(2, 20, (count,), generator=g).tolist()
        examples = [{"input_ids": torch.randint(3, 99, (n,), generator=g).tolist(), "label": i % 2}
                    for i, n in enumerate(lengths)]
        return transformers.BertForSequenceClassification(config), examples
    from layer_recycling.bench.assets import minilm_path, movie_reviews

    tok = transformers.AutoTokenizer.from_pretrained(minilm_path())
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    train, _ = movie_reviews("rotten_tomatoes")
    return model, [{**tok(t, truncation=True, max_length=64), "label": y} for t, y in train[:count]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="a directory every rank shares")
    ap.add_argument("--model", default="minilm", choices=["minilm", "tiny"])
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else None
    transformers.logging.set_verbosity_error()
    model, examples = model_and_examples(args.model, args.examples)
    rec = lr.recycle(model.to(device), at=0.5, store=lr.DiskStore(args.store))
    added = rec.fill(examples, progress=rank == 0)  # each rank computes its share of what is missing
    loader = rec.loader(examples, batch_size=32, shuffle=True, group_by_length=True, seed=0, progress=False)
    ddp = torch.nn.parallel.DistributedDataParallel(rec)  # the frozen bottom holds no gradients: DDP skips it
    opt = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=5e-5)
    for epoch in range(args.epochs):
        loader.batch_sampler.set_epoch(epoch)
        total = 0.0
        for batch in loader:
            loss = ddp(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            total += loss.item()
        print(f"rank {rank} epoch {epoch + 1}: {len(loader)} batches, loss {total / len(loader):.3f}, "
              f"bottom ran on {rec.stats.bottom_examples} examples (fill added {added} in all)", flush=True)
    # DDP's reducer holds the process group: free it while the group lives, so that the group is not torn down
    # inside the reducer's destructor (with gloo, that join can deadlock against a worker thread waiting for the GIL)
    del ddp, opt
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
