"""The pooled level: one vector per input stored, a head trained on it, equal to the plain model with its encoder
frozen."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T
from torch import nn

import layer_recycling as lr
from layer_recycling import pooled
from layer_recycling.pooled import ClassifierHead, Pooled, SkipConnectionHead

from conftest import text_model

TEXTS = [[2, 5, 6, 7, 3], [2, 8, 3], [2, 5, 6, 7, 3], [2, 9, 10, 11, 12, 3], [2, 8, 3], [2, 13, 3]]  # 4 distinct


def _examples(labels: bool = False):
    return [{"input_ids": ids, **({"labels": i % 2} if labels else {})} for i, ids in enumerate(TEXTS)]


def _padded(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Right-padded model inputs and labels of ``examples``."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.tensor([e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in examples])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor([e["labels"] for e in examples])}


def _train(model: nn.Module, batches, steps: int = 3) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        for batch in batches:
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()


def test_the_untrained_head_gives_the_pretrained_pooled_embedding_and_left_padding_is_served():
    model = text_model("bert", "Model").eval()
    rec = lr.recycle(model, at="pooled", pooling="mean")
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
    mask = (ids != 0).long()
    want = pooled.pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask, "mean")
    got = rec(input_ids=ids, attention_mask=mask)
    assert got.shape == want.shape and float((got - want).abs().max()) <= 1e-5
    left = torch.tensor([[2, 5, 6, 7, 3], [0, 0, 2, 8, 3]])  # each row keyed as its tokens: both hits
    assert float((rec(input_ids=left, attention_mask=(left != 0).long()) - want).abs().max()) <= 1e-5
    assert rec.stats.bottom_examples == 2 and rec.stats.hits == 2
    cls = lr.recycle(model, at="pooled", pooling="cls")  # another pooling is another store's fingerprint
    assert cls.fingerprint.parts["split"] != rec.fingerprint.parts["split"]
    assert float((cls(input_ids=ids, attention_mask=mask) - model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]).abs().max()
                 ) <= 1e-5


def test_training_from_the_store_runs_the_bottom_once_per_distinct_input_and_equals_the_frozen_plain_model():
    torch.manual_seed(0)
    model = text_model("bert", "Model")
    plain = Pooled(pooled.TextPooler(copy.deepcopy(model), "mean"), ClassifierHead(model.config.hidden_size, 2),
                   ("input_ids", "attention_mask"), config=model.config)
    recycled = copy.deepcopy(plain)
    rec = lr.recycle(recycled, at="pooled")
    loader = rec.loader(_examples(labels=True), batch_size=3, progress=False)
    assert next(iter(loader))["states"].shape == (3, 1, model.config.hidden_size)  # one vector an input
    _train(rec, loader)
    assert rec.stats.bottom_examples == 4  # 6 examples, 4 distinct texts, 3 epochs: each text ran once
    plain.encoder.requires_grad_(False)
    plain.encoder.eval()  # the plain model with its encoder frozen (no dropout in it), trained on the same batches
    batches = [_padded(_examples(labels=True)[i : i + 3]) for i in (0, 3)]  # as the loader batched them
    _train(plain, batches)
    for (name, p), q in zip(plain.head.named_parameters(), rec.top.model.head.parameters()):
        assert float((p - q).abs().max()) <= 1e-5, name
    assert any(float(p.abs().max()) > 0 for p in rec.top.model.head.head.fc.parameters())  # it trained
    rec.eval()
    logits = rec(**{k: v for k, v in batches[0].items() if k != "labels"}).logits
    assert float((logits - plain(**{k: v for k, v in batches[0].items() if k != "labels"}).logits).abs().max()) <= 1e-5
    assert all(not p.requires_grad for p in rec.bottom.parameters())


def test_the_users_model_is_unchanged_after_training_the_recycled_one():
    model = text_model("bert", "Model")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec = lr.recycle(model, at="pooled", head=ClassifierHead(model.config.hidden_size, 2))
    _train(rec, rec.loader(_examples(labels=True), batch_size=3, progress=False), steps=1)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_skip_connection_head_starts_as_the_identity_and_folds_into_one_linear():
    head = SkipConnectionHead(4)
    x = torch.randn(3, 4)
    assert torch.equal(head(x), x)
    with torch.no_grad():
        head.fc.weight.normal_()
        head.fc.bias.normal_()
        head.gate.normal_()
    assert float((head.as_linear()(x) - head(x)).abs().max()) <= 1e-5


def test_an_image_model_that_pools_stores_one_vector_per_image():
    from layer_recycling.bench.vision import tiny_cnn_classifier

    torch.manual_seed(0)
    model = tiny_cnn_classifier(num_classes=3)
    model.head.fc = nn.Identity()  # its pooled features: (b, width)
    images = [{"pixel_values": torch.randn(3, 16, 16), "labels": i % 3} for i in range(4)]
    rec = lr.recycle(model, at="pooled", head=ClassifierHead(8, 3))
    batch = next(iter(rec.loader(images, batch_size=4, progress=False)))
    assert batch["states"].shape == (4, 8)
    rec.eval()
    pixels = torch.stack([e["pixel_values"] for e in images])
    want = rec.top.model.head(model.eval()(pixels).logits).logits
    assert float((rec(pixel_values=pixels).logits - want).abs().max()) <= 1e-5


def test_refusals_say_what_to_pass():
    model = text_model("bert", "Model")
    with pytest.raises(TypeError, match="head= and pooling= are for at='pooled'"):
        lr.recycle(model, at=0.5, pooling="mean")
    with pytest.raises(ValueError, match="expected one of"):
        lr.recycle(model, at="pooled", pooling="weightedmean")
    with pytest.raises(ValueError, match="pass head="):
        from layer_recycling.bench.vision import tiny_cnn_classifier

        lr.recycle(tiny_cnn_classifier(num_classes=3), at="pooled")
    with pytest.raises(ValueError, match="dual text-image model"):
        lr.recycle(T.CLIPModel(T.CLIPConfig(
            text_config={"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16},
            vision_config={"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
                           "image_size": 8, "patch_size": 4}, projection_dim=8)), at="pooled")
    with pytest.raises(ValueError, match="leave pooling out"):
        lr.recycle(T.ViTModel(T.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=16, image_size=8, patch_size=4)), at="pooled",
                   pooling="mean")
