"""The fingerprint covers what decides the bottom's output, and nothing in the top."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import layer_recycling as lr
from conftest import text_examples, text_model


def _nudge(param: torch.Tensor) -> None:
    """Move one element of ``param`` by one unit in the last place."""
    with torch.no_grad():
        flat = param.view(-1)
        flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf")))


def test_one_ulp_in_a_bottom_weight_is_refused(bert):
    store = lr.MemoryStore()
    before = lr.recycle(bert, at=2, store=store).fingerprint.digest
    _nudge(bert.bert.encoder.layer[1].attention.self.query.weight)
    with pytest.raises(lr.FingerprintMismatch, match="weights") as info:
        lr.recycle(bert, at=2, store=store)
    assert "new store" in str(info.value)
    assert lr.recycle(bert, at=2, store=None).fingerprint.digest != before


def test_the_embeddings_are_part_of_the_bottom(bert):
    before = lr.recycle(bert, at=0, store=None).fingerprint.digest
    _nudge(bert.bert.embeddings.word_embeddings.weight)
    assert lr.recycle(bert, at=0, store=None).fingerprint.digest != before


def test_a_change_in_the_top_keeps_the_fingerprint(bert):
    store = lr.MemoryStore()
    before = lr.recycle(bert, at=2, store=store).fingerprint.digest
    _nudge(bert.bert.encoder.layer[2].output.dense.weight)
    _nudge(bert.classifier.weight)
    assert lr.recycle(bert, at=2, store=store).fingerprint.digest == before


def test_the_head_does_not_count(bert):
    base, tok = text_model("bert", "Model"), text_model("bert", "ForTokenClassification")
    base.load_state_dict(bert.bert.state_dict())
    tok.bert.load_state_dict(bert.bert.state_dict(), strict=False)  # no pooler in a token classifier
    tok.config.num_labels = 7
    fingerprints = {lr.recycle(m, at=2, store=None).fingerprint.digest for m in (bert, base, tok)}
    assert len(fingerprints) == 1


@pytest.mark.parametrize("change, part", [(dict(at=3), "split"), (dict(preprocess={"max_length": 64}), "preprocess")])
def test_split_and_preprocessing_are_named_when_they_differ(bert, change, part):
    store = lr.MemoryStore()
    lr.recycle(bert, at=2, store=store)
    with pytest.raises(lr.FingerprintMismatch, match=part):
        lr.recycle(bert, store=store, **{"at": 2, **change})


def test_the_stored_codec_counts(bert):
    native = lr.recycle(bert, 2, lr.MemoryStore()).fingerprint.parts
    half = lr.recycle(bert, 2, lr.MemoryStore(codec=torch.float16)).fingerprint.parts
    assert native["codec"] != half["codec"] and native["weights"] == half["weights"]


def test_the_config_counts_and_mismatches_say_what_differs_in_words(bert):
    other = text_model("bert", "ForSequenceClassification")
    other.config.layer_norm_eps = 1e-5
    store = lr.MemoryStore()
    lr.recycle(bert, 2, store)
    with pytest.raises(lr.FingerprintMismatch, match="config field layer_norm_eps: 1e-12 != 1e-05"):
        lr.recycle(other, 2, store)
    with pytest.raises(lr.FingerprintMismatch, match="split: stored 2 of 4 blocks of encoder.layer; now 3 of 4"):
        lr.recycle(bert, 3, store)


def test_a_reload_in_a_new_process_gives_the_same_fingerprint(bert, tmp_path):
    bert.save_pretrained(tmp_path)
    code = (
        "import transformers as T, layer_recycling as lr;"
        f"m = T.AutoModelForSequenceClassification.from_pretrained({str(tmp_path)!r});"
        "print(lr.recycle(m, at=2, store=None).fingerprint.digest)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == lr.recycle(bert, at=2, store=None).fingerprint.digest


def test_the_tokenizer_counts(bert, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    def make(vocab):
        tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[UNK]")

    a = make({"[UNK]": 0, "good": 1, "bad": 2})
    b = make({"[UNK]": 0, "good": 2, "bad": 1})
    fa = lr.recycle(bert, 2, None, tokenizer=a).fingerprint.digest
    a(["good bad", "bad"], padding=True, truncation=True, max_length=4)  # sets call state on the backend
    assert lr.recycle(bert, 2, None, tokenizer=a).fingerprint.digest == fa
    assert fa == lr.recycle(bert, 2, None, tokenizer=make({"[UNK]": 0, "good": 1, "bad": 2})).fingerprint.digest
    assert fa != lr.recycle(bert, 2, None, tokenizer=b).fingerprint.digest
    assert fa != lr.recycle(bert, 2, None).fingerprint.digest


def test_dropout_rates_and_the_dtype_field_do_not_count(bert):
    store = lr.MemoryStore()
    lr.recycle(bert, 2, store)
    other = text_model("bert", "ForSequenceClassification")
    other.config.hidden_dropout_prob, other.config.attention_probs_dropout_prob = 0.3, 0.0
    other.config.dtype = "float32"
    assert lr.recycle(other, 2, store).at == 2  # the same states in eval mode: the store is accepted


def test_states_under_autocast_are_their_own_kind(bert):
    examples = text_examples(3)
    store = lr.MemoryStore()
    rec = lr.recycle(bert, 2, store)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="autocast=.bfloat16."):
        rec.fill(examples, progress=False)
    assert len(store) == 0
    half = lr.recycle(bert, 2, lr.MemoryStore(), autocast="bfloat16")
    assert half.fingerprint.parts["autocast"] == "bfloat16"
    half.fill(examples, progress=False)
    with pytest.raises(lr.FingerprintMismatch, match="autocast"):
        lr.recycle(bert, 2, half.store)  # a full-precision model refuses bfloat16 states
    full = lr.recycle(bert, 2, lr.MemoryStore())
    full.fill(examples, progress=False)
    key = next(iter(full.store))
    assert not torch.equal(half.store[key].float(), full.store[key])  # they are other states
