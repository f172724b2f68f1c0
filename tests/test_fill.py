"""fill.py: the bottom runs once per distinct key the store lacks; user keys are checked against inputs; verify."""

from __future__ import annotations

import pytest
import torch

import layer_recycling as lr
from layer_recycling import fill as fill_module
from conftest import text_examples
from helpers import bert_classifier, nan_bottom
from layer_recycling.stores import codecs


def test_fill_computes_each_distinct_input_once(bert):
    examples = text_examples() * 3 + [dict(e, label=0) for e in text_examples()]  # repeats, and new labels
    rec = lr.recycle(bert, at=2).eval()
    assert rec.fill(examples, batch_size=4, progress=False) == 6
    assert rec.stats.bottom_examples == 6 and len(rec.store) == 6
    calls = rec.stats.bottom_calls
    assert rec.fill(examples, progress=False) == 0  # a second fill is free
    assert rec.stats.bottom_calls == calls


@pytest.mark.parametrize("codec", [None, "float16", "int8"])
def test_a_user_key_and_verify_catch_frozen_augmentation(bert, codec):
    """Each codec's rounding passes (int8's, up to half a step per row, once flagged every entry), a change of
    the inputs does not."""
    examples = [dict(e, id=i) for i, e in enumerate(text_examples())]
    rec = lr.recycle(bert, at=2, key=lambda ex: ex["id"], store=lr.MemoryStore(codec=codec)).eval()
    rec.fill(examples, progress=False)
    assert rec.verify(examples).ok
    augmented = [dict(e, input_ids=[(t + 1) % 99 for t in e["input_ids"]]) for e in examples]  # same ids, new inputs
    with pytest.warns(UserWarning, match="augmentation") as caught:
        report = rec.verify(augmented, sample=4)
    assert report.checked == 4 and len(report.mismatched) == 6  # the 4 re-computed, and all 6 by their input digests
    assert sum("re-computed entries differ" in str(w.message) for w in caught) == 1
    assert sum("other model inputs" in str(w.message) for w in caught) == 1


def test_a_user_key_given_to_two_different_inputs_is_refused_at_fill_and_flagged_by_verify(bert):
    examples = [dict(e, id=i // 2) for i, e in enumerate(text_examples(4))]  # ids 0, 0, 1, 1: collisions
    rec = lr.recycle(bert, at=2, key=lambda ex: ex["id"])
    for call in (rec.fill, rec.predict):  # predict once served one input's state for the other
        with pytest.raises(ValueError, match="examples 0 and 1 the same key.*inputs differ"):
            call(examples, progress=False)
    assert len(rec.store) == 0
    rec.fill(examples[::2], progress=False)  # one example per id: no collision within the fill
    with pytest.warns(UserWarning, match="more than one distinct input"):
        report = rec.verify(examples)
    assert not report.ok and len(report.mismatched) == 2


def test_a_key_collision_is_named_by_the_examples_places_in_the_whole_fill_and_predict(bert, monkeypatch):
    """Examples are read in chunks (fill) and batches (predict): the error names places among all examples."""
    monkeypatch.setattr(fill_module, "CHUNK", 4)
    examples = [dict(e, id=i if i < 5 else 5) for i, e in enumerate(text_examples(7, lengths=(3, 4, 5, 6, 7, 8, 9)))]
    rec = lr.recycle(bert, at=2, key=lambda ex: ex["id"])
    with pytest.raises(ValueError, match="examples 5 and 6 the same key"):
        rec.fill(examples, progress=False)
    with pytest.raises(ValueError, match="examples 5 and 6 the same key"):
        rec.predict(examples, batch_size=4, progress=False)


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_a_user_key_reused_by_a_later_run_for_other_inputs_is_caught_against_the_stored_entry(bert, tmp_path, kind):
    examples = [dict(e, id=i) for i, e in enumerate(text_examples(4))]
    later = [dict(e, id=i) for i, e in enumerate(text_examples(4, lengths=(7, 3)))]  # same ids, other texts
    store = lr.MemoryStore() if kind == "memory" else lr.DiskStore(tmp_path / "s")
    lr.recycle(bert, at=2, store=store, key=lambda ex: ex["id"]).fill(examples, progress=False)
    if kind == "disk":  # a new run: only what is on disk
        store.close()
        store = lr.DiskStore(tmp_path / "s")
    rec = lr.recycle(bert, at=2, store=store, key=lambda ex: ex["id"])
    assert rec.fill(examples, progress=False) == 0  # the same inputs again: nothing to do, nothing refused
    with pytest.raises(ValueError, match="stored earlier from different model inputs"):
        rec.fill(later, progress=False)
    assert len(rec.eval().predict(examples, batch_size=2, progress=False)) == 4  # the stored inputs: served
    with pytest.raises(ValueError, match="stored earlier from different model inputs"):
        rec.predict(later, batch_size=2, progress=False)
    with pytest.warns(UserWarning, match="other model inputs than these examples"):
        report = rec.verify(later, sample=1)
    assert not report.ok and len(report.mismatched) == 4  # every stale key named, not only the sampled one
    assert len(store) == 4 and rec.verify(examples).ok  # nothing stored was lost or replaced


def test_content_keys_keep_no_input_digest(bert):
    store = lr.MemoryStore()
    rec = lr.recycle(bert, at=2, store=store)
    rec.fill(text_examples(3), progress=False)
    assert store.checks_many(list(store)) == [None] * 3  # the key is the inputs' digest already


def test_an_example_longer_than_the_models_positions_is_named_with_the_limit():
    import transformers as T

    model = T.BertForSequenceClassification(T.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                         num_attention_heads=2, intermediate_size=37,
                                                         max_position_embeddings=16))
    rec = lr.recycle(model, at=1)
    with pytest.raises(ValueError, match=r"an example of 20 tokens is longer than the model's "
                                         r"max_position_embeddings \(16\).*max_length=16"):
        rec.fill([{"input_ids": [5] * n, "label": 0} for n in (4, 20)], progress=False)
    assert rec.fill([{"input_ids": [5] * 16, "label": 0}], progress=False) == 1  # at the limit: fine


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_a_stopped_fill_commits_what_it_computed_and_a_rerun_computes_only_the_rest(tmp_path, stop):
    """Ctrl-C (KeyboardInterrupt) and SIGTERM (torchrun stopping the other ranks when one fails) lost every entry
    since the last full segment: now the batches computed before the stop are committed, and the rerun computes
    only the others. SIGTERM's default handling is back after the fill."""
    import os
    import signal

    from conftest import text_model

    examples = text_examples(12)
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=lr.DiskStore(tmp_path / "s"))
    run_bottom, calls = rec.pipeline.run_bottom, []

    def stopped(batch):
        calls.append(len(calls))
        if len(calls) == 3:
            if stop == "ctrl-c":
                raise KeyboardInterrupt
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, previous)  # never kill the test run
            os.kill(os.getpid(), signal.SIGTERM)
        return run_bottom(batch)

    rec.pipeline.run_bottom = stopped
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh process (a test runner may set one)
    try:
        with pytest.raises(SystemExit if stop == "sigterm" else KeyboardInterrupt):
            rec.fill(examples, batch_size=4, progress=False)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    reopened = lr.DiskStore(tmp_path / "s", readonly=True)
    assert len(reopened) == 8 and reopened.info()["buffered"] == 0  # two batches of four, committed
    again = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=lr.DiskStore(tmp_path / "s"))
    assert again.fill(examples, batch_size=4, progress=False) == 4


def test_non_finite_states_are_refused_at_fill_naming_the_example_unless_allowed(tmp_path):
    examples = [{"input_ids": [5, 6, 8, 9]}, {"input_ids": [5, 7, 9]}, {"input_ids": [4, 4]}]  # token 7 is NaN
    rec = lr.recycle(nan_bottom(bert_classifier()), at=2, store=lr.DiskStore(tmp_path / "s"))
    with pytest.raises(ValueError, match=r"example 1 \(key [0-9a-f]{12}\.\.\.\) has a state with \d+ NaN.*"
                                         r"allow_nonfinite=True"):
        rec.fill(examples, progress=False)
    assert len(rec.store) == 0  # nothing of the batch was stored
    allowed = lr.recycle(nan_bottom(bert_classifier()), at=2, store=lr.DiskStore(tmp_path / "a"), allow_nonfinite=True)
    assert allowed.fill(examples, progress=False) == 3
    assert torch.isnan(allowed.store[allowed.encode(examples[1])[0]]).all()
    assert allowed.fingerprint.parts["nonfinite"] == "allowed" and "nonfinite" not in rec.fingerprint.parts
    with pytest.raises(lr.FingerprintMismatch, match="nonfinite"):  # its readers could not count on finite states
        lr.recycle(nan_bottom(bert_classifier()), at=2, store=lr.DiskStore(tmp_path / "a"))
    with pytest.raises(ValueError, match="inf or nan, which int8 cannot"):  # allowed, but int8 cannot hold them
        lr.recycle(nan_bottom(bert_classifier()), at=2, store=lr.MemoryStore(codec="int8"),
                   allow_nonfinite=True).fill(examples, progress=False)


def test_a_codec_beyond_its_stated_bound_is_refused_on_the_first_batch_with_the_numbers(bert, monkeypatch):
    rec = lr.recycle(bert, at=2, store=lr.MemoryStore(codec="int8"))
    real = codecs.error_bound
    monkeypatch.setattr(codecs, "error_bound", lambda x, codec: real(x, codec) / 10)  # a bound it cannot meet
    with pytest.raises(ValueError, match=r"codec 'int8-outliers' exceeds its stated error bound \(\|x - x'\| <= "
                                         r"m / 254.*\): example \d+ \(key [0-9a-f]{12}\.\.\.\) has row \d+, "
                                         r"value \d+ = .* an error of [0-9.e-]+ where the bound is [0-9.e-]+ .*Nothing"):
        rec.fill(text_examples(), progress=False)
    assert len(rec.store) == 0
    monkeypatch.setattr(codecs, "error_bound", real)
    assert rec.fill(text_examples(), progress=False) == 6 and rec.verify(text_examples()).ok
