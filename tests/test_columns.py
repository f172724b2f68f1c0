"""Larger than memory: a fill reads its examples once, in chunks; a loader holds keys, lengths and labels as arrays.

Every test here would fail if the whole dataset were held: a source that can be iterated once, a memory bound that
grows slower than the example count, labels read back from a ``datasets.Dataset``.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

import layer_recycling as lr
from layer_recycling import fill as fill_module
from layer_recycling.columns import CachedDataset, Labels
from layer_recycling.stores.memory import MemoryStore
from conftest import text_examples, text_model
from helpers import reachable_bytes


class Once:
    """An iterable that may be iterated once, as a generator over a file or a stream."""

    def __init__(self, examples):
        self.examples, self.used = examples, False

    def __iter__(self):
        assert not self.used, "read twice"
        self.used = True
        yield from self.examples


class Discarding(MemoryStore):
    """Counts what it is given and keeps none of it: what a fill holds in memory is then the fill's own, not the
    store's."""

    def __init__(self):
        super().__init__()
        self.put = 0

    def put_many(self, keys, values, checks=None) -> None:
        self.put += len(list(keys))


@pytest.fixture
def bert():
    return text_model("bert", "ForSequenceClassification")


def test_fill_reads_a_source_once_and_computes_each_distinct_example_once(bert, monkeypatch):
    monkeypatch.setattr(fill_module, "CHUNK", 4)  # several chunks, duplicates across them
    examples = text_examples(6) * 2 + text_examples(9)[6:]
    rec = lr.recycle(bert, at=2).eval()
    assert rec.fill(Once(examples), batch_size=2, progress=False) == 9
    assert rec.stats.bottom_examples == 9 and len(rec.store) == 9
    assert rec.fill(iter(examples), progress=False) == 0


def test_a_user_key_given_to_two_inputs_in_different_chunks_is_refused(bert, monkeypatch):
    monkeypatch.setattr(fill_module, "CHUNK", 2)
    examples = [dict(e, id=i % 3) for i, e in enumerate(text_examples(6))]  # example 3 reuses example 0's key
    rec = lr.recycle(bert, at=2, key=lambda ex: ex["id"])
    with pytest.raises(ValueError, match="key= gives 1 example"):
        rec.fill(iter(examples), progress=False)


def _fill_peak(bert, n: int) -> tuple[int, int]:
    """(peak bytes tracemalloc saw during a fill of ``n`` short examples from a generator, entries put)."""
    rec = lr.recycle(bert, at=1, store=Discarding()).eval()
    examples = ({"input_ids": [1 + i % 90, 2 + i // 90 % 90, 3 + i // 8100 % 90]} for i in range(n))
    tracemalloc.start()
    try:
        rec.fill(examples, batch_size=64, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, rec.store.put


def test_a_fills_memory_does_not_grow_with_the_number_of_examples(bert, monkeypatch):
    monkeypatch.setattr(fill_module, "CHUNK", 128)
    small, put = _fill_peak(bert, 512)
    large, put_large = _fill_peak(bert, 4096)
    assert (put, put_large) == (512, 4096)
    # Holding every example's (key, inputs) cost 1,809 B an example; what is left (about 20 B) is torch's and
    # transformers' per-call bookkeeping over the batches, not the examples.
    per_example = (large - small) / (4096 - 512)
    assert per_example < 100, f"peak {large} B for 4096 examples against {small} B for 512: it grows with them"


def test_a_loader_holds_arrays_not_objects_per_example(bert, tmp_path):
    examples = [dict(e, label=i % 3) for i, e in enumerate(text_examples(40, lengths=tuple(range(2, 30))))]
    rec = lr.recycle(bert, at=2, store=lr.DiskStore(tmp_path / "s")).eval()
    dataset = rec.dataset(iter(examples), progress=False)  # read once: scalar labels become a column
    assert isinstance(dataset, CachedDataset) and len(dataset) == 40
    assert dataset.columns.keys.shape == (40, 20) and dataset.columns.keys.is_shared()
    assert dataset.labels.columns["labels"].tolist() == [i % 3 for i in range(40)]
    assert np.array_equal(dataset.lengths, [len(e["input_ids"]) for e in examples])
    batch = dataset.collate(dataset.__getitems__([0, 5, 7]))
    assert batch["labels"].tolist() == [0, 2, 1] and batch["states"].shape[0] == 3
    assert dataset.labels.columns["labels"].dtype == torch.int8 and batch["labels"].dtype == torch.int64


def test_integer_label_columns_keep_the_smallest_type_and_give_back_their_own():
    """A class id is kept in 1 byte, not 8 (the largest share of a built loader's memory after its key); every value,
    the extremes of each type included, comes back as given, in the dtype given."""
    for values, kept in (([0, 1, 127, -128], torch.int8), ([0, 300], torch.int16), ([-(2**31), 5], torch.int32),
                         ([2**40, -1], torch.int64)):
        labels = Labels((), None)
        for v in values:
            labels.add({"label": torch.tensor(v), "score": torch.tensor(v / 2, dtype=torch.float32)})
        labels.done()
        assert labels.columns["label"].dtype == kept and labels.columns["score"].dtype == torch.float32
        got = labels.of(list(range(len(values))))
        assert [g["label"].item() for g in got] == values and {g["label"].dtype for g in got} == {torch.int64}
        assert [g["score"].item() for g in got] == [v / 2 for v in values]


def _tagged(n: int = 12) -> list[dict]:
    return [dict(e, labels=[(i + t) % 3 for t in range(len(e["input_ids"]))])
            for i, e in enumerate(text_examples(n, lengths=(4, 7, 3, 9)))]


def test_per_token_labels_of_a_datasets_dataset_are_read_back_when_a_batch_is_made(tmp_path):
    datasets = pytest.importorskip("datasets")
    model = text_model("bert", "ForTokenClassification")
    examples = _tagged()
    rec = lr.recycle(model, at=2, store=lr.DiskStore(tmp_path / "s")).eval()
    source = datasets.Dataset.from_list(examples)
    from_dataset = rec.loader(source, batch_size=4, progress=False)
    assert from_dataset.dataset.labels.columns is None and from_dataset.dataset.labels.source is source
    from_list = rec.loader(examples, batch_size=4, progress=False)
    for a, b in zip(from_dataset, from_list):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rec.stats.bottom_examples == len({tuple(e["input_ids"]) for e in examples})


def test_per_token_labels_from_an_iterator_are_kept(bert, tmp_path):
    model = text_model("bert", "ForTokenClassification")
    examples = _tagged()
    rec = lr.recycle(model, at=2).eval()
    kept = rec.dataset(Once(examples), progress=False)
    assert kept.labels.kept is not None and len(kept.labels.kept) == len(examples)
    batch = kept.collate(kept.__getitems__([1, 2]))
    assert batch["labels"][0, : len(examples[1]["input_ids"])].tolist() == examples[1]["labels"]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_read_the_columns_from_shared_memory(bert, tmp_path, context):
    examples = [dict(e, label=i % 2) for i, e in enumerate(text_examples(16))]
    rec = lr.recycle(bert, at=2, store=lr.DiskStore(tmp_path / "s")).eval()
    plain = list(rec.loader(examples, batch_size=4, progress=False))
    workers = list(rec.loader(examples, batch_size=4, progress=False, num_workers=2, multiprocessing_context=context))
    for a, b in zip(plain, workers):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_pairs_loader_holds_key_columns_and_reads_each_input_once(bert, tmp_path):
    texts = [{"input_ids": e["input_ids"]} for e in text_examples(8)]
    pairs = [{"anchor": texts[i], "positive": [texts[(i + 1) % 8], texts[(i + 2) % 8]], "label": i % 4}
             for i in range(8)]
    rec = lr.recycle(bert, at=2, store=lr.DiskStore(tmp_path / "s")).eval()
    from_once = rec.dataset(Once(pairs), inputs=["anchor", "positive"], progress=False)
    assert rec.stats.bottom_examples == 8  # each distinct text once, whichever field it is in
    assert from_once.fields["positive"].keys.shape == (16, 20) and len(from_once) == 8
    assert from_once.labels.columns["labels"].tolist() == [i % 4 for i in range(8)]
    plain = lr.recycle(bert, at=2, store=None).eval()
    want = list(plain.loader(pairs, inputs=["anchor", "positive"], batch_size=8, progress=False))[0]
    got = from_once.collate(from_once.__getitems__(list(range(8))))
    assert torch.equal(got["labels"], want["labels"])
    with torch.no_grad():
        for field in ("anchor", "positive"):
            assert torch.allclose(rec(**got[field]).logits, plain(**want[field]).logits, atol=1e-5)
    with pytest.raises(ValueError, match=r"example 1 holds \{'anchor': 1, 'positive': 1\} inputs per field"):
        rec.dataset(iter([pairs[0], dict(pairs[1], positive=texts[0])]), inputs=["anchor", "positive"],
                    progress=False)


def test_loaders_of_model_inputs_read_examples_again_and_hold_a_length_each(bert):
    datasets = pytest.importorskip("datasets")
    from layer_recycling.bench.runner import input_loader
    from layer_recycling.loader import InputDataset

    examples = [dict(e, label=i % 3) for i, e in enumerate(text_examples(10))]
    source = datasets.Dataset.from_list(examples)
    for loader in (input_loader(bert, source, batch_size=4), lr.recycle(bert, at=2, store=None).loader(
            source, batch_size=4, progress=False)):
        dataset = loader.dataset
        assert isinstance(dataset, InputDataset) and dataset.source is source and dataset.lengths.dtype == np.int64
        for a, b in zip(loader, input_loader(bert, examples, batch_size=4)):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    once = input_loader(bert, Once(examples), batch_size=4)  # read once: listed first
    assert len(once.dataset) == 10 and isinstance(once.dataset.source, list)


def test_a_fill_from_a_datasets_dataset_stores_what_one_from_a_list_stores(bert, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(fill_module, "CHUNK", 4)  # read chunk by chunk, a duplicate across chunks
    examples = text_examples(6) + text_examples(2)
    from_list = lr.recycle(bert, at=2, store=lr.DiskStore(tmp_path / "list")).eval()
    from_dataset = lr.recycle(bert, at=2, store=lr.DiskStore(tmp_path / "dataset")).eval()
    assert from_dataset.fill(datasets.Dataset.from_list(examples), progress=False) == 6
    assert from_list.fill(examples, progress=False) == 6 and from_dataset.stats.bottom_examples == 6
    keys = sorted(from_list.store)
    assert sorted(from_dataset.store) == keys
    for a, b in zip(from_list.store.get_many(keys), from_dataset.store.get_many(keys)):
        assert torch.equal(a, b)


def _pairs(n: int) -> list[dict]:
    texts = [{"input_ids": e["input_ids"]} for e in text_examples(n, lengths=tuple(range(2, 40)))]
    return [{"anchor": texts[i], "positive": texts[(i + 1) % n], "label": i % 4} for i in range(n)]


def _built(kind: str, bert, folder, n: int):
    """(the loader ``kind`` built over ``n`` examples, its source)."""
    datasets = pytest.importorskip("datasets")
    from layer_recycling.bench.runner import input_loader

    plain = [dict(e, label=i % 3) for i, e in enumerate(text_examples(n, lengths=tuple(range(2, 40))))]
    if kind == "cached":
        rec = lr.recycle(bert, at=2, store=lr.DiskStore(folder)).eval()
        return rec.loader(plain, batch_size=8, shuffle=True, progress=False), plain
    if kind == "pairs":
        rec, pairs = lr.recycle(bert, at=2, store=lr.DiskStore(folder)).eval(), _pairs(n)
        return rec.loader(pairs, inputs=["anchor", "positive"], batch_size=8, group_by_length=True,
                          progress=False), pairs
    source = datasets.Dataset.from_list(plain)
    if kind == "inputs, datasets.Dataset":
        return input_loader(bert, source, batch_size=8, shuffle=True), source
    if kind == "pairs of inputs, datasets.Dataset":
        pairs = datasets.Dataset.from_list(_pairs(n))
        return input_loader(bert, pairs, inputs=["anchor", "positive"], batch_size=8), pairs
    rec = lr.recycle(bert, at=2, store=None).eval()  # "no store, datasets.Dataset"
    return rec.loader(source, batch_size=8, group_by_length=True, progress=False), source


@pytest.mark.parametrize("kind", ["cached", "pairs", "inputs, datasets.Dataset", "pairs of inputs, datasets.Dataset",
                                  "no store, datasets.Dataset"])
def test_a_built_loader_holds_no_python_object_per_example(bert, tmp_path, kind):
    """What a built loader holds besides its source grows by a length an example (8 B, and its array's slack) for
    loaders of model inputs, and by nothing over stored states (keys, lengths and labels are in shared memory),
    where a str key in a list costs 97 B an example and the (key, labels, length) tuples held before 200 to 700."""
    small = reachable_bytes(*_built(kind, bert, tmp_path / "small", 64))
    large = reachable_bytes(*_built(kind, bert, tmp_path / "large", 576))
    per_example = (large - small) / (576 - 64)
    assert per_example < 10, f"{kind}: a built loader holds {per_example:.1f} B more an example ({small} B, {large} B)"


def _pickled_for_spawn(dataset) -> int:
    """Bytes of ``dataset`` pickled as a spawn DataLoader worker gets it (shared-memory tensors by handle)."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401 - registers torch's reductions with ForkingPickler

    return len(ForkingPickler.dumps(dataset))


def test_a_spawn_worker_gets_the_columns_by_handle_not_by_copy(bert, tmp_path):
    """A spawned worker unpickles the dataset: keys, lengths and label columns travel as shared-memory handles (the
    same few hundred bytes at any size), and the examples' list is not pickled along (it was, held for labels)."""
    rec = lr.recycle(bert, at=2, store=lr.DiskStore(tmp_path / "s")).eval()
    sizes = {}
    for n in (16, 512):
        examples = [dict(e, label=i % 3) for i, e in enumerate(text_examples(n, lengths=tuple(range(2, 40))))]
        single = rec.dataset(examples, progress=False)
        pairs = rec.dataset(_pairs(n), inputs=["anchor", "positive"], progress=False)
        sizes[n] = (_pickled_for_spawn(single), _pickled_for_spawn(pairs))
    for small, large in zip(sizes[16], sizes[512]):
        assert abs(large - small) < 256, f"pickled for a spawn worker: {small} B for 16 examples, {large} B for 512"


def test_a_large_built_dataset_hands_the_freed_heap_back(bert, tmp_path, monkeypatch):
    """Building grows buffers and frees them; glibc keeps what it cannot cut from its heap's top (54 B an example of
    a built loader at 300k examples) unless asked: a dataset of at least TRIM_AT examples asks once, a smaller one
    not at all."""
    from layer_recycling import columns

    calls = []
    monkeypatch.setattr(columns, "give_back_heap", lambda: calls.append(1))
    monkeypatch.setattr(columns, "TRIM_AT", 30)
    rec = lr.recycle(bert, at=2, store=lr.DiskStore(tmp_path / "s")).eval()
    for n, asked in ((20, 0), (40, 1)):
        rec.dataset([dict(e, label=1) for e in text_examples(n)], progress=False)
        assert len(calls) == asked, f"{n} examples: the heap handed back {len(calls)} times"
        calls.clear()
    monkeypatch.undo()
    columns.give_back_heap()  # the real call: glibc's malloc_trim here, nothing elsewhere
