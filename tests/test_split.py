"""Splitting: levels, every supported architecture and head, the untouched original, clear refusals."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as T
from torch import nn

import layer_recycling as lr
from conftest import LAYERS, TEXT_CASES, cnn_model, decoder_classifier, text_examples, text_model, vit_model
from helpers import max_diff, padded_batch

LEVELS = [0, 1, LAYERS // 2, LAYERS]


@pytest.mark.parametrize("family, head", TEXT_CASES)
@pytest.mark.parametrize("at", LEVELS)
def test_top_of_bottom_equals_the_model(family, head, at):
    model = text_model(family, head)
    batch = padded_batch(text_examples(), pad_id=model.config.pad_token_id or 0)
    s = lr.split(model, at)
    with torch.no_grad():
        expected = model(**batch)
        actual = s.top(s.bottom(**batch), attention_mask=batch["attention_mask"])
    assert s.at == at and s.num_layers == LAYERS
    assert max_diff(expected, actual, batch["attention_mask"]) <= 1e-5


@pytest.mark.parametrize("head", ["Model", "ForImageClassification"])
@pytest.mark.parametrize("at", LEVELS)
def test_vit_split(head, at):
    model, pixels = vit_model(head), torch.randn(3, 3, 16, 16)
    s = lr.split(model, at)
    with torch.no_grad():
        assert max_diff(model(pixel_values=pixels), s.top(s.bottom(pixel_values=pixels))) <= 1e-5


@pytest.mark.parametrize("at", LEVELS)
def test_generic_cnn_split(at):
    model, x = cnn_model(), torch.randn(5, 3, 8, 8)
    s = lr.split(model, at)
    assert s.num_layers == 4 and s.arch.blocks == "features"
    with torch.no_grad():
        assert max_diff(model(x), s.top(s.bottom(x))) <= 1e-5


def test_a_sequential_model_is_its_own_block_list():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(6)]).eval()
    s, x = lr.split(model, 0.5), torch.randn(2, 4)
    assert s.at == 3 and len(s.bottom) == 3
    assert torch.equal(s.top(s.bottom(x)), model(x))


def test_the_users_model_is_not_changed(bert):
    batch = padded_batch(text_examples())
    before = {n: id(m) for n, m in bert.named_modules()}
    with torch.no_grad():
        expected = bert(**batch).logits
    s = lr.split(bert, 2)
    assert {n: id(m) for n, m in bert.named_modules()} == before
    assert len(bert.bert.encoder.layer) == LAYERS and isinstance(bert.bert.embeddings, T.models.bert.modeling_bert.BertEmbeddings)
    with torch.no_grad():
        assert torch.equal(bert(**batch).logits, expected)
    # the halves share the model's parameters: no copy of the weights
    shared = {id(p) for p in bert.parameters()}
    assert all(id(p) in shared for p in [*s.bottom.parameters(), *s.top.parameters()])


def test_unknown_transformers_model_names_the_fix(monkeypatch):
    monkeypatch.delitem(lr.arch.TABLE, "albert")  # as a family the table does not know
    model = T.AlbertModel(T.AlbertConfig(vocab_size=99, hidden_size=32, num_attention_heads=2, intermediate_size=37,
                                         embedding_size=16, num_hidden_layers=2))
    with pytest.raises(ValueError, match="albert.*blocks="):
        lr.split(model, 1)


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral", "qwen2"])
@pytest.mark.parametrize("at", LEVELS)
def test_decoder_classifier_top_pools_the_last_real_token(family, at):
    model = decoder_classifier(family, "single_label_classification")
    examples = text_examples()
    batch = padded_batch(examples)  # right-padded, as batches inside the library are
    s = lr.split(model, at)
    with torch.no_grad():
        logits = s.top(s.bottom(**batch), attention_mask=batch["attention_mask"]).logits
        for i, e in enumerate(examples):  # the un-recycled model, each example alone
            assert float((model(input_ids=torch.tensor([e["input_ids"]])).logits[0] - logits[i]).abs().max()) <= 1e-5


def test_module_without_block_list_names_the_fix():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    with pytest.raises(ValueError, match="blocks='features'"):
        lr.split(Flat(), 1)


def test_explicit_block_path_overrides_the_search():
    model = cnn_model()
    with pytest.raises(ValueError, match="no block list at 'missing'"):
        lr.split(model, 1, blocks="missing")
    with pytest.raises(ValueError, match="is a Linear"):
        lr.split(model, 1, blocks="fc")


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
