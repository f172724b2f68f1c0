"""recycle(): served from the store it equals the model; fills once; trains the top only; refuses misuse."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as T
from torch import nn

import layer_recycling as lr
from conftest import LABELS, LAYERS, TEXT_CASES, cnn_model, text_examples, text_model, vit_model
from helpers import max_diff, padded_batch

LEVELS = [0, 1, LAYERS // 2, LAYERS]


@pytest.mark.parametrize("family, head", TEXT_CASES)
@pytest.mark.parametrize("at", LEVELS)
def test_served_from_the_store_equals_the_model(family, head, at):
    model = text_model(family, head)
    examples = text_examples()
    batch = padded_batch(examples, pad_id=model.config.pad_token_id or 0)
    rec = lr.recycle(model, at=at).eval()
    rec.fill(examples, batch_size=4, progress=False)
    calls = rec.stats.bottom_calls
    with torch.no_grad():
        expected, actual = model(**batch), rec(**batch)
    assert rec.stats.bottom_calls == calls and rec.stats.hits == len(examples)  # the top ran on stored states
    assert max_diff(expected, actual, batch["attention_mask"]) <= 1e-5


@pytest.mark.parametrize("at", LEVELS)
def test_vit_served_from_the_store(at):
    model = vit_model()
    pixels = torch.randn(4, 3, 16, 16)
    rec = lr.recycle(model, at=at).eval()
    rec.fill([{"pixel_values": p, "labels": 1} for p in pixels], progress=False)
    with torch.no_grad():
        out = rec(pixel_values=pixels, labels=torch.ones(4, dtype=torch.long))
        assert max_diff(model(pixel_values=pixels, labels=torch.ones(4, dtype=torch.long)), out) <= 1e-5
    assert rec.stats.hits == 4 and rec.stats.misses == 0


@pytest.mark.parametrize("at", LEVELS)
def test_cnn_served_from_the_store_with_pair_examples(at):
    model, x = cnn_model(), torch.randn(6, 3, 8, 8)
    rec = lr.recycle(model, at=at).eval()
    assert rec.fill([(xi, i % 3) for i, xi in enumerate(x)], progress=False) == 6
    with torch.no_grad():
        assert max_diff(model(x), rec(x)) <= 1e-5
    assert rec.stats.hits == 6


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


def test_keys_ignore_padding_and_container_type(bert):
    examples = text_examples()
    rec = lr.recycle(bert, at=2).eval()
    rec.fill([{k: torch.tensor(v) for k, v in e.items()} for e in examples], progress=False)
    with torch.no_grad():
        rec(**padded_batch(examples, extra=5))
    assert rec.stats.hits == len(examples) and rec.stats.misses == 0


def test_training_lowers_the_loss_without_running_the_bottom(bert):
    examples = text_examples(24)
    rec = lr.recycle(bert, at=2).eval()
    loader = rec.loader(examples, batch_size=8, shuffle=True, progress=False)
    calls = rec.stats.bottom_calls
    trainable = [p for p in rec.parameters() if p.requires_grad]
    assert {id(p) for p in trainable}.isdisjoint({id(p) for p in rec.bottom.parameters()})
    opt = torch.optim.AdamW(trainable, lr=3e-3)
    rec.train()
    assert not any(m.training for m in rec.bottom.modules())  # the bottom stays in eval mode
    losses = []
    for _ in range(8):
        for batch in loader:
            loss = rec(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.7
    assert rec.stats.bottom_calls == calls
    assert all(p.grad is None for p in rec.bottom.parameters())


def test_half_hits_run_the_bottom_on_the_misses_only(bert):
    examples = text_examples(8, lengths=(4, 9, 6, 3))
    rec = lr.recycle(bert, at=2).eval()
    rec.fill(examples[::2], progress=False)
    before = rec.stats.bottom_examples
    batch = padded_batch(examples)
    with torch.no_grad():
        out = rec(**batch)
        assert max_diff(bert(**batch), out, batch["attention_mask"]) <= 1e-5
    assert rec.stats.bottom_examples - before == 4
    assert (rec.stats.hits, rec.stats.misses, len(rec.store)) == (4, 4, 8)  # misses were stored


def test_misses_need_not_be_stored(bert):
    rec = lr.recycle(bert, at=2, store_misses=False).eval()
    with torch.no_grad():
        rec(**padded_batch(text_examples()))
    assert len(rec.store) == 0 and rec.stats.misses == 6


def test_no_store_runs_bottom_and_top_every_time(bert):
    rec = lr.recycle(bert, at=2, store=None).eval()
    assert isinstance(rec.store, lr.NullStore)
    batch = padded_batch(text_examples())
    with torch.no_grad():
        assert max_diff(bert(**batch), rec(**batch), batch["attention_mask"]) <= 1e-5
        rec(**batch)
    assert rec.stats.bottom_calls == 2 and rec.stats.misses == 12
    assert rec.fill(text_examples(), progress=False) == 0 and len(rec.store) == 0  # nothing is kept


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


def test_a_trainable_bottom_is_refused(bert):
    rec = lr.recycle(bert, at=2).eval()
    loader = rec.loader(text_examples(), batch_size=3, progress=False)
    bert.bert.encoder.layer[0].output.dense.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="trainable parameters.*layer.0"):
        rec(**next(iter(loader)))


def test_unknown_inputs_are_named(bert):
    rec = lr.recycle(bert, at=2).eval()
    with pytest.raises(TypeError, match="pixel_values"):
        rec(pixel_values=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="no 'input_ids', the model's main input.*Tokenize the text first"):
        rec.fill([{"text": "not tokenized"}], progress=False)


def test_generic_model_without_loss_says_how_to_train():
    rec = lr.recycle(cnn_model(), at=2).eval()
    batch = next(iter(rec.loader([(torch.randn(3, 8, 8), 1) for _ in range(4)], batch_size=4, progress=False)))
    assert batch["states"].shape == (4, 8, 8, 8) and batch["labels"].tolist() == [1] * 4
    with pytest.raises(TypeError, match="computes no loss"):
        rec(**batch)
    assert rec(states=batch["states"]).shape == (4, LABELS)


def test_half_precision_store_serves_close_states(bert):
    rec = lr.recycle(bert, at=2, store=lr.MemoryStore(codec=torch.float16)).eval()
    examples = text_examples()
    rec.fill(examples, progress=False)
    assert next(iter(rec.store._entries.values())).dtype == torch.float16
    batch = padded_batch(examples)
    with torch.no_grad():
        assert max_diff(bert(**batch), rec(**batch), batch["attention_mask"]) <= 1e-2


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


def _tied_lm(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == "gpt2":
        return text_model("gpt2", "LMHeadModel")
    config = T.LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                           num_key_value_heads=1, intermediate_size=37, tie_word_embeddings=True)
    return T.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_head_tied_to_the_frozen_embeddings_is_named_in_a_warning(family):
    model = _tied_lm(family)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    embeddings = "transformer.wte" if family == "gpt2" else "model.embed_tokens"
    words = rf"tied to the frozen bottom: lm_head\.weight \(= {embeddings}\.weight\).*untie=True"
    with pytest.warns(UserWarning, match=words):
        rec = lr.recycle(model, at=2)
    assert not rec.top.model.lm_head.weight.requires_grad  # frozen with the bottom, hence the warning


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_untie_gives_the_top_a_trainable_head_and_leaves_the_model_alone(family):
    model = _tied_lm(family)
    embedding = model.get_input_embeddings().weight.detach().clone()
    examples = [{"input_ids": e["input_ids"], "labels": e["input_ids"]} for e in text_examples(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # untied: no warning
        rec = lr.recycle(model, at=LAYERS, untie=True)
    head = rec.top.model.lm_head.weight
    assert head.requires_grad and head is not model.lm_head.weight
    batch = next(iter(rec.loader(examples, batch_size=4, progress=False)))
    opt = torch.optim.AdamW([p for p in rec.parameters() if p.requires_grad], lr=1e-2)
    rec.train()
    losses = []
    for _ in range(40):
        loss = rec(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5, losses
    assert torch.equal(model.get_input_embeddings().weight, embedding)  # the user's model is unchanged
    assert model.lm_head.weight is model.get_input_embeddings().weight  # and still tied


def test_a_transformers_model_takes_one_block_path(bert):
    with pytest.raises(ValueError, match="has one block list"):
        lr.recycle(bert, at=2, blocks=["encoder.layer", "encoder.layer"])




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
