"""saving.py: the whole model in its own names (state dict and save_pretrained); a bottom change is refused."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

import layer_recycling as lr
from conftest import LAYERS, text_examples
from helpers import assert_same_weights, bert_classifier, padded_batch, train_top


def test_a_state_dict_with_another_bottom_is_refused_before_anything_loads():
    rec, other = lr.recycle(bert_classifier(), at=2), lr.recycle(bert_classifier(seed=1), at=2)
    before = {k: v.clone() for k, v in rec.state_dict().items()}
    with pytest.raises(RuntimeError, match="other weights for the frozen bottom.*store holds states of the old"):
        rec.load_state_dict(other.state_dict())
    assert all(torch.equal(before[k], v) for k, v in rec.state_dict().items())  # nothing changed
    with pytest.raises(RuntimeError, match="other weights for the frozen bottom"):
        lr.load_model_state_dict(rec, lr.model_state_dict(other))


def test_the_whole_model_state_dict_round_trips_in_the_models_own_names():
    model = bert_classifier()
    rec = lr.recycle(model, at=2)
    train_top(rec)
    whole = lr.model_state_dict(rec)
    assert set(whole) == set(model.state_dict())  # from_pretrained's names, not bottom./top.
    fresh = lr.recycle(bert_classifier(), at=2)
    lr.load_model_state_dict(fresh, whole)
    assert_same_weights(fresh.top, rec.top)


def test_save_pretrained_writes_the_trained_model_and_how_it_was_recycled(tmp_path):
    rec = lr.recycle(bert_classifier(), at=2, store_misses=False)
    train_top(rec)
    rec.save_pretrained(tmp_path / "saved")
    loaded = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    batch = padded_batch(text_examples(4))
    with torch.no_grad():
        assert float((loaded(**batch).logits - rec.eval()(**batch).logits).abs().max()) <= 1e-5
    config = lr.RecycleConfig.from_pretrained(tmp_path / "saved")
    recorded = json.loads((tmp_path / "saved" / "recycling_config.json").read_text())["recorded"]
    assert config.at == 2 and config.store_misses is False
    assert recorded["at_blocks"] == 2 and recorded["num_layers"] == LAYERS and recorded["fingerprint"] == rec.fingerprint.parts
    again = lr.recycle(loaded, config=config, store=rec.store)  # the same bottom: the store binds
    assert again.fingerprint.parts == rec.fingerprint.parts


def test_an_untied_head_is_saved_as_the_tops_trained_copy(tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = T.GPT2Config(vocab_size=99, n_embd=32, n_layer=LAYERS, n_head=2, n_positions=64)
    model = T.GPT2LMHeadModel(config).eval()
    written = []  # the user's config was set untied for the save and set back: now it is never written
    setattr_ = T.GPT2Config.__setattr__
    monkeypatch.setattr(T.GPT2Config, "__setattr__", lambda self, k, v: (
        written.append(k) if self is model.config and k == "tie_word_embeddings" else None, setattr_(self, k, v))[1])
    rec = lr.recycle(model, at=LAYERS // 2, untie=True)
    with torch.no_grad():
        rec.top.model.lm_head.weight.add_(0.5)  # trained: now differs from the frozen embeddings
    whole = lr.model_state_dict(rec)
    assert torch.equal(whole["lm_head.weight"], rec.top.model.lm_head.weight)
    assert not torch.equal(whole["lm_head.weight"], model.transformer.wte.weight)
    rec.save_pretrained(tmp_path / "saved")
    loaded = T.GPT2LMHeadModel.from_pretrained(tmp_path / "saved")
    assert not loaded.config.tie_word_embeddings and model.config.tie_word_embeddings  # the user's stays tied
    assert written == []
    assert torch.equal(loaded.lm_head.weight, rec.top.model.lm_head.weight.detach())
    torch.manual_seed(0)
    fresh = lr.recycle(T.GPT2LMHeadModel(config).eval(), at=LAYERS // 2, untie=True)
    lr.load_model_state_dict(fresh, whole)  # the trained head is the top's copy, not a change of the bottom
    assert torch.equal(fresh.top.model.lm_head.weight, rec.top.model.lm_head.weight)
    assert torch.equal(fresh.source.transformer.wte.weight, model.transformer.wte.weight)


def test_a_model_without_save_pretrained_says_how_to_save_it():
    rec = lr.recycle(torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(4)]), at=2)
    with pytest.raises(TypeError, match=r"torch.save\(rec.state_dict\(\), path\).*recycle_config.save_pretrained"):
        rec.save_pretrained("unused")
