"""Training loaders: labels all-or-none, clear refusals, the same batches from a store or from inputs, and examples
of several inputs (anchor, positive, negatives) stored once per distinct input."""

from __future__ import annotations

import pytest
import torch

import layer_recycling as lr
from layer_recycling.bench.runner import input_loader
from conftest import LABELS, text_examples, text_model
from helpers import padded_batch


def test_mixing_labelled_and_unlabelled_examples_names_the_example(bert):
    examples = text_examples(4)
    del examples[2]["label"]
    rec = lr.recycle(bert, at=2)
    with pytest.raises(ValueError, match="example 2 has no labels, but example 0 has \\['labels'\\]"):
        rec.loader(examples, progress=False)
    assert rec.stats.bottom_calls == 0  # refused before any work


def test_an_empty_loader_and_drop_last_with_grouping_are_explained(bert):
    rec = lr.recycle(bert, at=2)
    with pytest.raises(ValueError, match="got no examples"):
        rec.loader([], progress=False)
    with pytest.raises(ValueError, match="drop_last=True.*group_by_length=True.*Drop drop_last"):
        rec.loader(text_examples(), group_by_length=True, drop_last=True, progress=False)


def test_input_loader_batches_a_whole_model_like_the_recycled_loader(bert):
    examples = text_examples(8)
    full = list(input_loader(bert, examples, batch_size=4, seed=0, shuffle=True))
    rec = lr.recycle(bert, at=2).eval()
    recycled = list(rec.loader(examples, batch_size=4, seed=0, shuffle=True, progress=False))
    assert [b["labels"].tolist() for b in full] == [b["labels"].tolist() for b in recycled]
    assert all(torch.equal(a["attention_mask"], b["attention_mask"]) for a, b in zip(full, recycled))
    with torch.no_grad():  # the same batch: the whole model's loss on inputs equals the top's on stored states
        assert abs(float(bert(**full[0]).loss) - float(rec(**recycled[0]).loss)) <= 1e-5


def test_grouped_sampler_follows_set_epoch():
    from layer_recycling.batches import LengthGroupedBatches

    sampler = LengthGroupedBatches(list(range(40)), 4, shuffle=True, seed=3)
    sampler.set_epoch(5)
    first = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) == first
    sampler.set_epoch(6)
    assert list(sampler) != first


def test_a_sampler_or_batch_sampler_of_your_own_is_used(bert):
    examples = [dict(e, label=i) for i, e in enumerate(text_examples(6))]
    rec = lr.recycle(bert, at=2)
    batches = list(rec.loader(examples, batch_sampler=[[5, 0], [2, 3, 4]], progress=False))
    assert [b["labels"].tolist() for b in batches] == [[5, 0], [2, 3, 4]]
    ordered = list(rec.loader(examples, batch_size=3, sampler=[4, 3, 2, 1, 0, 5], progress=False))
    assert [b["labels"].tolist() for b in ordered] == [[4, 3, 2], [1, 0, 5]]


# ---- examples of several inputs: loader(inputs=[...]) ---------------------------------------------------------

def _groups():
    """Pairs over 6 texts, text 0 in three of them, with a list of two hard negatives each."""
    t = [{k: v for k, v in e.items() if k != "label"} for e in text_examples(6)]
    pairs = [(0, 1), (0, 2), (3, 0), (4, 5), (5, 4)]
    return t, [{"anchor": t[a], "positive": t[p], "negatives": [t[(a + 2) % 6], t[(p + 3) % 6]], "label": i % 2}
               for i, (a, p) in enumerate(pairs)]


def _plain(model, rows):
    """The whole model's last hidden states of ``rows`` (unpadded inputs), right-padded, and their mask."""
    batch = padded_batch(rows, extra=0)
    with torch.no_grad():
        return model(**batch).last_hidden_state, batch["attention_mask"]


@pytest.mark.parametrize("store", ["memory", None])
def test_each_input_is_keyed_by_its_content_stored_once_and_batched_by_field(store):
    model = text_model("bert", "Model")
    _, examples = _groups()
    rec = lr.recycle(model, at=2, **({} if store else {"store": None})).eval()
    loader = rec.loader(examples, batch_size=5, inputs=["anchor", "positive", "negatives"], progress=False)
    if store:
        assert len(rec.store) == 6 and rec.stats.bottom_examples == 6  # 20 inputs, 6 distinct texts, each run once
    (batch,) = list(loader)
    assert set(batch) == {"anchor", "positive", "negatives", "labels"} and batch["labels"].tolist() == [0, 1, 0, 1, 0]
    for field, rows in [("anchor", [e["anchor"] for e in examples]), ("positive", [e["positive"] for e in examples]),
                        ("negatives", [n for e in examples for n in e["negatives"]])]:  # b * k, example by example
        want, mask = _plain(model, rows)
        with torch.no_grad():
            got = rec(**batch[field]).last_hidden_state
        assert got.shape == want.shape and float((got - want)[mask.bool()].abs().max()) <= 1e-5
    if store:
        assert rec.stats.bottom_examples == 6 and rec.stats.misses == 0  # every batch came from the store
    else:
        assert rec.stats.misses == 20 and rec.stats.stored == 0  # model inputs: the bottom ran on each call


def test_an_in_batch_negatives_loss_trains_from_the_store_without_the_bottom():
    _, examples = _groups()
    rec = lr.recycle(text_model("bert", "Model"), at=2)
    data = rec.dataset(examples, inputs=["anchor", "positive"], progress=False)
    loader = torch.utils.data.DataLoader(data, batch_size=5, collate_fn=data.collate)
    opt = torch.optim.AdamW([p for p in rec.parameters() if p.requires_grad], lr=1e-2)
    ran, losses = rec.stats.bottom_examples, []

    def embed(side):
        out = rec(**side).last_hidden_state  # mean pooling over real tokens
        return (out * side["attention_mask"][..., None]).sum(1) / side["attention_mask"].sum(1, keepdim=True)

    for _ in range(10):
        for batch in loader:
            scores = torch.nn.functional.normalize(embed(batch["anchor"]), dim=-1) @ torch.nn.functional.normalize(
                embed(batch["positive"]), dim=-1).T * 20
            loss = torch.nn.functional.cross_entropy(scores, torch.arange(len(scores)))
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5 and rec.stats.bottom_examples == ran


def test_bad_groups_say_what_was_expected():
    _, examples = _groups()
    rec = lr.recycle(text_model("bert", "Model"), at=2)
    with pytest.raises(ValueError, match=r"example 0 has \['anchor', 'label', 'negatives', 'positive'\]; "
                                         r"loader\(inputs=\['anchor', 'query'\]\)"):
        rec.loader(examples, inputs=["anchor", "query"], progress=False)
    with pytest.raises(TypeError, match="a list of field names"):
        rec.loader(examples, inputs="anchor", progress=False)
    labelled = [dict(e, positive=dict(e["positive"], label=1)) for e in examples]
    with pytest.raises(ValueError, match=r"example 0's field 'positive' holds labels \(\['labels'\]\)"):
        rec.loader(labelled, inputs=["anchor", "positive"], progress=False)
    batched = [dict(e, negatives={"input_ids": [n["input_ids"] for n in e["negatives"]]}) for e in examples]
    with pytest.raises(ValueError, match=r"example 0's field 'negatives' holds one tokenizer call over 2 texts.*"
                                         r"\[tok\(text\) for text in texts\]"):
        rec.loader(batched, inputs=["anchor", "negatives"], progress=False)
    examples[3]["negatives"] = examples[3]["negatives"][:1]
    with pytest.raises(ValueError, match=r"example 3 holds .*'negatives': 1.* example 0 holds .*'negatives': 2"):
        rec.loader(examples, inputs=["anchor", "negatives"], progress=False)
    assert rec.stats.bottom_examples == 0  # refused before any work


def test_labels_give_the_models_loss():
    model = text_model("bert", "ForTokenClassification")
    examples = [{**e, "labels": [i % LABELS] * len(e["input_ids"])} for i, e in enumerate(text_examples())]
    rec = lr.recycle(model, at=2).eval()
    batch = next(iter(rec.loader(examples, batch_size=6, progress=False)))
    assert batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()  # padding is ignored by the loss
    full = padded_batch(examples, extra=0)
    full["labels"] = batch["labels"]
    with torch.no_grad():
        assert abs(float(rec(**batch).loss) - float(model(**full).loss)) <= 1e-5


def test_question_answering_positions_are_stacked():
    model = text_model("bert", "ForQuestionAnswering").eval()
    same = text_examples(6, lengths=(7,))  # no padding: HF's QA loss counts padded positions in its softmax
    examples = [{"input_ids": e["input_ids"], "start_positions": i % 5, "end_positions": 5} for i, e in enumerate(same)]
    rec = lr.recycle(model, at=2).eval()
    batch = next(iter(rec.loader(examples, batch_size=6, progress=False)))
    assert batch["start_positions"].tolist() == [0, 1, 2, 3, 4, 0] and batch["end_positions"].tolist() == [5] * 6
    with torch.no_grad():
        want = model(**padded_batch(same, extra=0), start_positions=batch["start_positions"],
                     end_positions=batch["end_positions"])
        assert abs(float(rec(**batch).loss) - float(want.loss)) <= 1e-5


def test_no_store_loader_trains_from_model_inputs_like_the_store(bert):
    examples = text_examples(12)
    cached, plain = lr.recycle(bert, at=2).eval(), lr.recycle(bert, at=2, store=None).eval()
    a = list(cached.loader(examples, batch_size=4, seed=0, shuffle=True, progress=False))
    b = list(plain.loader(examples, batch_size=4, seed=0, shuffle=True, progress=False))
    assert "states" in a[0] and "input_ids" in b[0] and plain.stats.bottom_calls == 0
    with torch.no_grad():
        for x, y in zip(a, b):
            assert abs(float(cached(**x).loss) - float(plain(**y).loss)) <= 1e-5
    assert plain.stats.bottom_calls == 3


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_loader_workers_give_the_same_batches(bert, context):
    rec = lr.recycle(bert, at=2).eval()
    examples = text_examples(12)
    plain = list(rec.loader(examples, batch_size=4, progress=False))
    workers = list(rec.loader(examples, batch_size=4, progress=False, num_workers=2, multiprocessing_context=context))
    assert len(plain) == len(workers) == 3
    for a, b in zip(plain, workers):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_grouped_batches_cover_every_example_once_with_less_padding(bert):
    rec = lr.recycle(bert, at=2).eval()
    examples = [dict(e, label=i % 3) for i, e in enumerate(text_examples(60, lengths=tuple(range(2, 40))))]
    plain = rec.loader(examples, batch_size=6, shuffle=True, seed=0, progress=False)
    grouped = rec.loader(examples, batch_size=6, shuffle=True, seed=0, group_by_length=True, progress=False)
    pads = {}
    for name, loader in [("plain", plain), ("grouped", grouped)]:
        batches = list(loader)
        assert sum(len(b["labels"]) for b in batches) == 60 and len(batches) == len(loader) == 10
        pads[name] = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    assert pads["grouped"] < pads["plain"] / 2
    first, second = ([b["labels"].tolist() for b in grouped] for _ in range(2))
    assert first != second  # a new order each epoch
