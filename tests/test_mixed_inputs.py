"""Examples that differ in which model inputs they have, and token ids the model cannot take.

A batch is one set of fields: an example with ``token_type_ids`` beside one without once got the other's fields
(fill keyed the field names of the first, longest row), and out-of-range ids reached torch's embedding.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T

import layer_recycling as lr
from layer_recycling.bench.runner import input_loader

LONG = {"input_ids": [1, 5, 6, 7, 8, 9, 2]}  # the longest, without token types: fill sorts it first
TYPED = {"input_ids": [1, 5, 6, 2], "token_type_ids": [0, 0, 1, 1]}
TYPED_LONG = {"input_ids": [1, 7, 7, 3, 4, 2], "token_type_ids": [0, 0, 0, 1, 1, 1]}


@pytest.fixture
def bert():
    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return T.BertForSequenceClassification(config).eval()


def _alone(model, example: dict) -> torch.Tensor:
    """The model's logits for ``example`` run alone."""
    with torch.no_grad():
        return model(**{k: torch.tensor([v]) for k, v in example.items() if k != "label"}).logits[0]


def _store(kind: str, tmp_path):
    return lr.DiskStore(tmp_path / "s") if kind == "disk" else lr.MemoryStore()


@pytest.mark.parametrize("order", [(LONG, TYPED, TYPED_LONG), (TYPED, LONG, TYPED_LONG), (TYPED_LONG, LONG, TYPED)])
@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_each_example_gets_its_own_fields_state_in_fill_and_predict(bert, tmp_path, kind, order):
    rec = lr.recycle(bert, at=0.5, store=_store(kind, tmp_path)).eval()
    assert rec.fill(list(order), batch_size=3, progress=False) == 3
    assert rec.stats.bottom_examples == 3
    for example, out in zip(order, rec.predict(list(order), progress=False)):  # all hits: the stored states
        assert float((out["logits"] - _alone(bert, example)).abs().max()) < 1e-5
    assert rec.stats.hits == 3 and rec.stats.misses == 0


def test_predict_misses_of_mixed_fields_run_each_as_given(bert):
    rec = lr.recycle(bert, at=0.5).eval()
    for example, out in zip((LONG, TYPED), rec.predict([LONG, TYPED], progress=False)):
        assert float((out["logits"] - _alone(bert, example)).abs().max()) < 1e-5
    assert rec.stats.misses == 2


def test_a_loader_over_mixed_fields_serves_each_examples_state(bert, tmp_path):
    examples = [dict(e, label=i % 2) for i, e in enumerate((LONG, TYPED, TYPED_LONG))]
    rec = lr.recycle(bert, at=0.5, store=lr.DiskStore(tmp_path / "s")).eval()
    batch = next(iter(rec.loader(examples, batch_size=3, progress=False)))
    with torch.no_grad():
        logits = rec(**batch).logits
    for i, example in enumerate(examples):
        assert float((logits[i] - _alone(bert, example)).abs().max()) < 1e-5


def test_a_loader_of_model_inputs_refuses_mixed_fields_up_front(bert):
    rec = lr.recycle(bert, at=0.5, store=None)  # no store: batches of model inputs, padded together
    with pytest.raises(ValueError, match=r"example 1 has the model inputs \['input_ids', 'token_type_ids'\], but "
                                         r"example 0 has \['input_ids'\]"):
        rec.loader([LONG, TYPED], batch_size=2, progress=False)
    with pytest.raises(ValueError, match="same fields"):
        input_loader(bert, [dict(LONG, label=0), dict(TYPED, label=1)], batch_size=2)


def test_pairs_of_model_inputs_refuse_mixed_fields_within_a_field(bert):
    rec = lr.recycle(bert, at=0.5, store=None)
    pairs = [{"anchor": LONG, "positive": TYPED}, {"anchor": TYPED, "positive": TYPED_LONG}]
    with pytest.raises(ValueError, match="example 1.s .anchor. input 0 has the model inputs"):
        rec.loader(pairs, inputs=["anchor", "positive"], batch_size=2, progress=False)


@pytest.mark.parametrize("ids, words", [
    ([1, 100, 2], "holds the token id 100 (token 1; 1 such id(s) in all), but the model's embedding "
                  "has 100 ids (0..99)"),
    ([1, -3, 2], "token id -3"),
])
def test_token_ids_outside_the_vocabulary_are_refused_before_the_model_runs(bert, tmp_path, ids, words):
    rec = lr.recycle(bert, at=0.5, store=lr.DiskStore(tmp_path / "s")).eval()
    for call in (lambda: rec.fill([{"input_ids": ids}, TYPED], progress=False),
                 lambda: rec.predict([{"input_ids": ids}], progress=False),
                 lambda: rec(input_ids=torch.tensor([ids]))):
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            call()
    assert rec.stats.bottom_calls == 0 and len(rec.store) == 0


def test_padding_may_hold_an_id_outside_the_vocabulary(bert):
    rec = lr.recycle(bert, at=0.5).eval()
    batch = {"input_ids": torch.tensor([[1, 5, 2], [1, 2, 1000]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    assert rec(**batch).logits.shape == (2, 2)


@pytest.mark.parametrize("ids, dtype", [([1.0, 2.0], "float32"), ([True, False], "bool")])
def test_token_ids_that_are_not_integers_are_refused(bert, ids, dtype):
    rec = lr.recycle(bert, at=0.5).eval()
    with pytest.raises(TypeError, match=f"input_ids of dtype {dtype}; expected integer token ids"):
        rec.fill([{"input_ids": ids}], progress=False)
    with pytest.raises(TypeError, match=f"dtype {dtype}"):
        rec(input_ids=torch.tensor([ids]))
