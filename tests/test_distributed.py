"""Two ranks with the gloo backend (spawned here, shut down at the end): fill, loaders and DDP training."""

from __future__ import annotations

import datetime
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import layer_recycling as lr
from conftest import text_examples, text_model
from helpers import assert_stores_agree, threads

WORLD = 2


def _init(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                                         world_size=WORLD, timeout=datetime.timedelta(seconds=60))


def _run(worker, folder: Path, *args, limit: float = 240) -> None:
    """Spawn the ranks and wait for them, at most ``limit`` seconds (generous on a loaded 2-core machine)."""
    ranks = torch.multiprocessing.spawn(worker, args=(str(folder), *args), nprocs=WORLD, join=False)
    deadline = time.monotonic() + limit
    while not ranks.join(timeout=2):  # a rank that raised re-raises here, with its traceback
        if time.monotonic() > deadline:
            alive = [r for r, p in enumerate(ranks.processes) if p.is_alive()]
            for p in ranks.processes:
                p.kill()
            pytest.fail(f"{worker.__name__}: ranks {alive} still running after {limit:.0f} s; killed them")


def _fill(rank: int, folder: str) -> None:
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=lr.DiskStore(f"{folder}/store"))
    added = rec.fill(text_examples(11) * 2, batch_size=1, progress=False)
    Path(folder, f"rank{rank}.json").write_text(json.dumps(
        {"added": added, "bottom_examples": rec.stats.bottom_examples, "seen": len(rec.store)}))


def _fill_worker(rank: int, folder: str) -> None:
    _init(rank, folder)
    try:
        _fill(rank, folder)
    finally:
        torch.distributed.destroy_process_group()


def _phases_worker(rank: int, folder: str) -> None:
    """One process group for the three phases the tests below check, each in its own folder: one spawn, not three."""
    _init(rank, folder)
    try:
        for phase in (_fill, _loaders, _ddp, _mismatch, _unshared):
            Path(folder, phase.__name__).mkdir(exist_ok=True)
            phase(rank, str(Path(folder, phase.__name__)))
            torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def _mismatch(rank: int, folder: str) -> None:
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=lr.DiskStore(f"{folder}/store"))
    examples, said = text_examples(6), {}
    for name, call in (("fill", lambda: rec.fill(examples[rank:], progress=False)),
                       ("loader", lambda: rec.loader(examples if rank == 0 else examples[::-1], progress=False))):
        try:
            call()
            said[name] = None
        except ValueError as err:
            said[name] = str(err)
    Path(folder, f"rank{rank}.json").write_text(json.dumps(said))


def _unshared(rank: int, folder: str) -> None:
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2,
                     store=lr.DiskStore(f"{folder}/node{rank}"))  # each rank its own directory: not shared
    try:
        rec.fill(text_examples(6), progress=False)
        said = None
    except lr.StoreCorrupted as err:
        said = str(err)
    Path(folder, f"rank{rank}.json").write_text(json.dumps(said))


@pytest.fixture(scope="module")
def phases(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ranks")
    _run(_phases_worker, folder)
    return folder


def test_two_ranks_fill_each_key_once_and_equal_one_process(phases, tmp_path):
    folder = phases / "_fill"
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["added"] for r in ranks] == [11, 11] and [r["seen"] for r in ranks] == [11, 11]
    assert sum(r["bottom_examples"] for r in ranks) == 11 and min(r["bottom_examples"] for r in ranks) >= 4
    assert_stores_agree(one_process_fill(tmp_path / "one"), lr.DiskStore(folder / "store", readonly=True))


def one_process_fill(path: Path):
    """The reference: the same examples, each alone (batch_size=1), one thread as each rank runs."""
    alone = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=lr.DiskStore(path))
    with threads(1):
        alone.fill(text_examples(11), batch_size=1, progress=False)
    return alone.store


def _loaders(rank: int, folder: str) -> None:
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=lr.DiskStore(f"{folder}/store"))
    examples = [dict(e, label=i) for i, e in enumerate(text_examples(23, lengths=tuple(range(2, 30))))]
    epochs = {}
    for grouped in (False, True):
        loader = rec.loader(examples, batch_size=4, shuffle=True, seed=7, group_by_length=grouped, progress=False)
        epochs[str(grouped)] = []
        for epoch in range(2):
            loader.batch_sampler.set_epoch(epoch)
            epochs[str(grouped)].append([b["labels"].tolist() for b in loader])
    Path(folder, f"rank{rank}.json").write_text(json.dumps(epochs))


def test_each_rank_reads_an_equal_disjoint_share_of_every_epoch(phases):
    ranks = [json.loads((phases / "_loaders" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for grouped in ("False", "True"):
        for epoch in range(2):
            batches = [ranks[r][grouped][epoch] for r in range(WORLD)]
            assert len(batches[0]) == len(batches[1]) == 3  # 23 examples padded to 24, 12 per rank
            seen = [sorted(x for b in batches[r] for x in b) for r in range(WORLD)]
            assert len(seen[0]) == len(seen[1]) == 12
            assert sorted(set(seen[0]) | set(seen[1])) == list(range(23))  # every example, one repeated to pad
            assert len(set(seen[0]) & set(seen[1])) <= 1
        assert ranks[0][grouped][0] != ranks[0][grouped][1]  # a new order each epoch


STEPS = 3


def _ddp(rank: int, folder: str) -> None:
    torch.manual_seed(0)
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=lr.DiskStore(f"{folder}/store"))
    rec.eval()  # dropout off: the single-process reference must draw the same numbers
    loader = rec.loader(text_examples(16), batch_size=2, shuffle=True, seed=3, progress=False)
    model = torch.nn.parallel.DistributedDataParallel(rec)  # the one-line wrap: the bottom has no grads
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _, batch in zip(range(STEPS), loader):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    if rank == 0:
        torch.save({k: v for k, v in rec.top.state_dict().items()}, f"{folder}/top.pt")
    Path(folder, f"rank{rank}.json").write_text(json.dumps({"calls": rec.stats.bottom_examples}))
    del model  # DDP's reducer goes before the process group; no rank leaves while another still talks to it
    torch.distributed.barrier()


def test_ddp_training_of_the_top_equals_one_process_on_the_same_global_batches(phases):
    folder = phases / "_ddp"
    torch.manual_seed(0)
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=lr.DiskStore(folder / "store"))
    rec.eval()
    examples = text_examples(16)
    shares = []
    for rank in range(WORLD):  # the batches each rank read: the same sampler, told its rank
        sampler = lr.batches.LengthGroupedBatches([1] * 16, 2, shuffle=True, seed=3, rank=rank, world=WORLD, group=False)
        shares.append(list(sampler))
    dataset = rec.loader(examples, batch_size=2, progress=False).dataset
    opt = torch.optim.SGD([p for p in rec.parameters() if p.requires_grad], lr=0.5)
    for step in range(STEPS):
        losses = [rec(**dataset.collate(dataset.__getitems__(shares[r][step]))).loss for r in range(WORLD)]
        (sum(losses) / WORLD).backward()  # DDP averages the ranks' gradients
        opt.step()
        opt.zero_grad()
    trained = torch.load(folder / "top.pt")
    worst = max(float((trained[k] - v).abs().max()) for k, v in rec.top.state_dict().items())
    assert worst <= 1e-5
    assert sum(json.loads((folder / f"rank{r}.json").read_text())["calls"] for r in range(WORLD)) == 16


def test_ranks_passing_other_examples_or_another_order_are_refused_on_every_rank(phases):
    """Different lists filled a part of each and failed later with a KeyError; the same list in another order gave
    overlapping loader shares (3 of 10 examples trained twice an epoch, 3 never), silently."""
    said = [json.loads((phases / "_mismatch" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for r in said:
        assert "rank(s) [1] of the process group passed other examples to fill, or the same in another order" in r["fill"]
        assert "other examples to rec.loader, or the same in another order" in r["loader"]
    assert len(lr.DiskStore(phases / "_mismatch" / "store", readonly=True)) == 0  # refused before computing any


def test_ranks_that_do_not_share_the_store_directory_are_told_so_on_every_rank(phases):
    """Rank 1 once failed with a missing snapshot file and rank 0 reported success with 4 of its 6 examples."""
    for r in range(WORLD):
        said = json.loads((phases / "_unshared" / f"rank{r}.json").read_text())
        assert "rank(s) [1] cannot open the merged index" in said and "Do all ranks open one directory" in said


def _dying_worker(rank: int, folder: str) -> None:
    _init(rank, folder)
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=lr.DiskStore(f"{folder}/store"))
    if rank == 1:  # killed after its third committed entry, mid-fill
        put, count = rec.store.put_many, [0]

        def put_then_die(keys, values):
            put(keys, values)
            rec.store.flush()
            count[0] += 1
            if count[0] == 3:
                os._exit(9)

        rec.store.put_many = put_then_die
    rec.fill(text_examples(11), batch_size=1, progress=False)


@pytest.mark.slow  # a killed rank aborts its peer: about 10 s, and timing-sensitive on a busy machine
def test_a_rank_killed_mid_fill_then_a_rerun_completes_the_store(tmp_path):
    with pytest.raises(Exception):
        _run(_dying_worker, tmp_path)
    partial = len(lr.DiskStore(tmp_path / "store", readonly=True))
    assert 3 <= partial < 11
    for name in ("rendezvous", "rank0.json", "rank1.json"):
        (tmp_path / name).unlink(missing_ok=True)
    _run(_fill_worker, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert sum(r["bottom_examples"] for r in ranks) == 11 - partial  # only the missing keys ran
    assert_stores_agree(one_process_fill(tmp_path / "one"), lr.DiskStore(tmp_path / "store", readonly=True))


def test_the_ddp_example_runs_under_torchrun(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(root / "examples" / "ddp.py"), "--store", str(tmp_path / "store"), "--model", "tiny",
           "--examples", "80", "--epochs", "2"]
    # its own session: on a timeout the ranks are killed with torchrun, not left behind
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        stdout, stderr = run.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        stdout, stderr = run.communicate()
        pytest.fail(f"torchrun still running after 240 s; killed it and its ranks. stdout:\n{stdout}\n"
                    f"stderr:\n{stderr[-2000:]}")
    out = subprocess.CompletedProcess(cmd, run.returncode, stdout, stderr)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("epoch 2: 2 batches") == 2  # each rank: 40 of the 80 examples (rank lines may interleave)
    assert len(lr.DiskStore(tmp_path / "store", readonly=True)) == 80
