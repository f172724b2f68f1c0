"""Serving: any padding side, hits and misses mixed, outputs equal to each example run alone through the model."""

from __future__ import annotations

import pytest
import torch

import layer_recycling as lr
from conftest import LABELS, LAYERS, cnn_model, text_examples, text_model
from helpers import bert_classifier, max_diff, nan_bottom, padded_batch

CASES = [("bert", "ForTokenClassification"), ("bert", "ForSequenceClassification"), ("llama", "ForCausalLM"),
         ("gpt2", "LMHeadModel"), ("bert", "ForQuestionAnswering")]


def padded(examples: list[dict], side: str, pad_id: int = 0, extra: int = 2) -> dict[str, torch.Tensor]:
    """A batch padded on ``side``, as a tokenizer with ``padding_side=side`` returns it."""
    t = max(len(e["input_ids"]) for e in examples) + extra
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        cols = slice(0, n) if side == "right" else slice(t - n, t)
        ids[i, cols], mask[i, cols] = torch.tensor(e["input_ids"]), 1
    return {"input_ids": ids, "attention_mask": mask}


def alone(model, example: dict) -> dict[str, torch.Tensor]:
    """The model's outputs for one example, unpadded: the reference every layout must give."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([example["input_ids"]]))
    return {k: v[0] for k, v in out.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("family, head", CASES)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("at", [1, LAYERS // 2, LAYERS])
def test_each_row_equals_the_example_run_alone(family, head, side, at):
    model = text_model(family, head)
    examples = text_examples(6)
    rec = lr.recycle(model, at=at).eval()
    rec.fill(examples[::2], progress=False)  # half the batch hits, half misses
    batch = padded(examples, side)
    with torch.no_grad():
        out = rec(**batch)
    assert (rec.stats.hits, rec.stats.misses) == (3, 3)
    for i, e in enumerate(examples):
        want, n = alone(model, e), len(e["input_ids"])
        real = batch["attention_mask"][i].bool()
        for name, ref in want.items():
            got = out[name][i]
            got = got[real] if ref.dim() >= 1 and ref.shape[0] == n and got.shape[0] == batch["input_ids"].shape[1] \
                else got
            assert float((got - ref).abs().max()) <= 1e-5, (name, i)


def test_two_short_texts_of_equal_length_get_their_own_keys_when_left_padded():
    model = text_model("bert", "ForSequenceClassification")
    rec = lr.recycle(model, at=2).eval()
    a, b = {"input_ids": [5, 6, 7]}, {"input_ids": [8, 9, 10]}
    with torch.no_grad():
        out = rec(**padded([a, b, {"input_ids": list(range(3, 12))}], "left"))
    assert len(rec.store) == 3
    assert not torch.allclose(out.logits[0], out.logits[1])


def test_per_token_labels_in_a_left_padded_batch_give_the_models_loss():
    model = text_model("bert", "ForTokenClassification")
    examples = text_examples(4)
    rec = lr.recycle(model, at=2).eval()
    left, right = padded(examples, "left"), padded(examples, "right")
    for batch in (left, right):
        batch["labels"] = torch.where(batch["attention_mask"].bool(), batch["input_ids"] % LABELS, -100)
    with torch.no_grad():
        assert abs(float(rec(**left).loss) - float(model(**right).loss)) <= 1e-5


def test_a_mask_with_holes_is_refused():
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2)
    with pytest.raises(ValueError, match="row 0 is \\[1, 0, 1\\].*contiguous"):
        rec(input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.tensor([[1, 0, 1]]))


@pytest.mark.parametrize("side", ["right", "left"])
def test_position_ids_are_served_when_they_count_from_0_and_refused_otherwise(side):
    """The stored states carry no positions and a rotary top counts from 0: positions a generation loop gives
    (each row's real tokens 0..n-1, on either padding side) are served as the model serves them; others are
    refused by name, in batches and in examples (they changed a Llama's states by 1e-2, served silently)."""
    model = text_model("llama", "Model")
    rec = lr.recycle(model, at=2).eval()
    examples = text_examples()[:3]
    batch = padded(examples, side)
    batch["position_ids"] = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)  # as generate() computes them
    with torch.no_grad():
        got = rec(**batch).last_hidden_state
    for i, e in enumerate(examples):
        real = got[i][batch["attention_mask"][i].bool()]
        assert (real - alone(model, e)["last_hidden_state"]).abs().max() <= 1e-5
    shifted = dict(batch, position_ids=batch["position_ids"] + 3)
    with pytest.raises(ValueError, match=r"row 0 of the batch has position_ids \[3, 4, 5.*not 0\.\.\d+.*Leave "
                                         r"position_ids out"):
        rec(**shifted)
    ids = examples[0]["input_ids"]
    with pytest.raises(ValueError, match=r"example has position_ids \[0, 5, 20"):
        rec.predict([{"input_ids": ids, "position_ids": [0, 5, 20, *range(21, 18 + len(ids))]}], progress=False)


def test_an_example_without_tokens_or_with_a_mask_of_another_length_is_refused():
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2)
    for bad in ([{"input_ids": [], "label": 0}], [{"input_ids": [5, 6], "label": 1}, {"input_ids": [], "label": 0}],
                [{"input_ids": [5, 6, 7], "attention_mask": [0, 0, 0], "label": 0}]):
        with pytest.raises(ValueError, match="example has no tokens.*Drop it"):
            rec.fill(bad, progress=False)
    with pytest.raises(ValueError, match=r"input_ids of shape \(4,\) but an attention_mask of shape \(3,\)"):
        rec.fill([{"input_ids": [5, 6, 7, 8], "attention_mask": [1, 1, 1]}], progress=False)
    batch = padded([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}], "right")
    batch["attention_mask"][1] = 0
    with pytest.raises(ValueError, match="row 1 of the batch has no tokens"):
        rec(**batch)
    assert len(rec.store) == 0  # nothing was stored by a refused call


@pytest.mark.parametrize("family, head", [("bert", "Model"), ("llama", "Model"), ("gpt2", "Model")])
def test_hidden_states_and_attentions_are_the_top_blocks_once_each(family, head):
    """transformers records them with hooks it installs on a model's first call; the halves, copied before it,
    installed a second set on the same blocks: each top block came back twice ([2, 3, 3, 4, 4] at 2 of 4)."""
    model = text_model(family, head)
    model.config._attn_implementation = "eager"  # attentions come back only from eager attention
    rec = lr.recycle(model, at=2).eval()
    ids = torch.tensor([[8, 9, 10, 11]])
    with torch.no_grad():
        model(input_ids=ids)  # the plain model's first call, after recycle
        plain = model(input_ids=ids, output_hidden_states=True, output_attentions=True)
        got = rec(input_ids=ids, output_hidden_states=True, output_attentions=True)
    assert len(got.hidden_states) == LAYERS - 2 + 1 and len(got.attentions) == LAYERS - 2
    for mine, theirs in ((got.hidden_states, plain.hidden_states[2:]), (got.attentions, plain.attentions[2:])):
        assert all(float((a - b).abs().max()) <= 1e-5 for a, b in zip(mine, theirs, strict=True))


def test_a_tuple_answer_follows_the_callers_layout_like_named_outputs():
    """With return_dict=False the per-token logits of a left-padded batch came back right-padded (0.30 off)."""
    model = text_model("bert", "ForTokenClassification")
    rec = lr.recycle(model, at=2).eval()
    examples = text_examples(3)
    batch = padded(examples, "left")
    with torch.no_grad():
        named, plain = rec(**batch), rec(**batch, return_dict=False)
        attentions = rec(**batch, output_attentions=True).attentions
    assert isinstance(plain, tuple) and torch.equal(plain[0], named.logits)
    t, real = batch["attention_mask"].shape[1], batch["attention_mask"].bool()
    for i, e in enumerate(examples):
        assert (named.logits[i][real[i]] - alone(model, e)["logits"]).abs().max() <= 1e-5
        assert not named.logits[i][~real[i]].any()
    assert all(a.shape[-2:] == (t, t) and not a[0][:, ~real[0]].any() for a in attentions)  # the caller's layout


def test_predict_runs_in_eval_mode_and_names_a_tuples_items():
    model = text_model("bert", "ForSequenceClassification")
    model.config.return_dict = False  # the model answers with tuples
    rec = lr.recycle(model, at=2)  # a new recycled model trains: dropout on
    assert rec.training
    examples = text_examples(3)
    first, again = rec.predict(examples, progress=False), rec.predict(examples, progress=False)
    assert rec.training and all(torch.equal(a["logits"], b["logits"]) for a, b in zip(first, again))
    cnn = cnn_model().eval()
    images = torch.randn(3, 3, 8, 8)
    pair = lr.recycle(TupleOut(cnn), at=2).eval()
    got = pair.predict([(x, 0) for x in images], progress=False)
    with torch.no_grad():
        want = TupleOut(cnn)(images)
    assert sorted(got[0]) == ["output[0]", "output[1]"]
    assert all(torch.allclose(g[f"output[{j}]"], want[j][i], atol=1e-5) for i, g in enumerate(got) for j in (0, 1))


class TupleOut(torch.nn.Module):
    """A generic model answering (logits, logits * 2)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.stem, self.features, self.fc = inner.stem, inner.features, inner.fc

    def forward(self, x):
        x = self.features(self.stem(x))
        y = self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))
        return y, 2 * y


def test_a_user_key_points_serving_to_predict():
    model = text_model("bert", "ForSequenceClassification")
    examples = [dict(e, id=f"ex{i}") for i, e in enumerate(text_examples())]
    rec = lr.recycle(model, at=2, key=lambda ex: ex["id"]).eval()
    rec.fill(examples, progress=False)
    with pytest.raises(TypeError, match="rec.predict\\(examples"):
        rec(**padded(examples, "right"))
    outputs = rec.predict(examples, batch_size=4, progress=False)
    assert rec.stats.hits == len(examples) and rec.stats.misses == 0
    for e, out in zip(examples, outputs):
        assert float((out["logits"] - alone(model, e)["logits"]).abs().max()) <= 1e-5


def test_the_key_function_sees_the_example_as_written():
    seen = []
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2,
                     key=lambda ex: seen.append(sorted(ex)) or ex["input_ids"])
    rec.fill([{"input_ids": [4, 5], "label": 1}], progress=False)
    assert seen == [["input_ids", "label"]]  # "label", not the renamed "labels"


def test_predict_cuts_per_token_outputs_to_each_example():
    model = text_model("bert", "ForTokenClassification")
    examples = text_examples(5)
    rec = lr.recycle(model, at=2).eval()
    outputs = rec.predict(examples, batch_size=2, progress=False)
    assert [o["logits"].shape[0] for o in outputs] == [len(e["input_ids"]) for e in examples]
    for e, out in zip(examples, outputs):
        assert float((out["logits"] - alone(model, e)["logits"]).abs().max()) <= 1e-5


@pytest.mark.parametrize("side", ["right", "left"])
def test_output_hidden_states_pass_through_and_start_at_the_stored_block(side):
    model = text_model("bert", "Model")
    examples = text_examples(4)
    rec = lr.recycle(model, at=2).eval()
    batch = padded(examples, side)
    right = padded(examples, "right")
    with torch.no_grad():
        out = rec(**batch, output_hidden_states=True, return_dict=True)
        at_block_2 = lr.split(model, 2).bottom(**right)
        last = model(**right).last_hidden_state
    assert len(out.hidden_states) == LAYERS - 2 + 1  # the stored state at block 2, then each top block
    real, real_right = batch["attention_mask"].bool(), right["attention_mask"].bool()
    for got, ref in ((out.hidden_states[0], at_block_2), (out.hidden_states[-1], last)):
        assert float((got[real] - ref[real_right]).abs().max()) <= 1e-5
    batch_from_store = next(iter(rec.loader(examples, batch_size=4, progress=False)))
    with torch.no_grad():
        assert len(rec(**batch_from_store, output_hidden_states=True).hidden_states) == LAYERS - 1


def test_non_finite_misses_are_refused_when_served_unless_allowed():
    batch = padded_batch([{"input_ids": [5, 6, 8]}, {"input_ids": [5, 7, 9, 4]}])  # row 1 holds the NaN token
    rec = lr.recycle(nan_bottom(bert_classifier()), at=2).eval()
    with pytest.raises(ValueError, match=r"row 1 of the batch \(key [0-9a-f]{12}\.\.\.\) has a state with"):
        rec(**batch)
    with pytest.raises(ValueError, match=r"example 3 \(key"):  # predict names the example of its call
        rec.predict([{"input_ids": [4]}, {"input_ids": [5]}, {"input_ids": [6]}, {"input_ids": [7]}], batch_size=2,
                    progress=False)
    assert len(rec.store) == 2  # the misses of predict's first batch; none of a refused batch
    allowed = lr.recycle(nan_bottom(bert_classifier()), at=2, allow_nonfinite=True).eval()
    assert torch.isnan(allowed(**batch).logits[1]).all() and len(allowed.store) == 2
    served = lr.recycle(nan_bottom(bert_classifier()), at=2, store_misses=False).eval()
    assert torch.isnan(served(**batch).logits[1]).all()  # nothing is stored, so nothing is refused


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


def test_unknown_inputs_are_named(bert):
    rec = lr.recycle(bert, at=2).eval()
    with pytest.raises(TypeError, match="pixel_values"):
        rec(pixel_values=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="no 'input_ids', the model's main input.*Tokenize the text first"):
        rec.fill([{"text": "not tokenized"}], progress=False)


def test_half_precision_store_serves_close_states(bert):
    rec = lr.recycle(bert, at=2, store=lr.MemoryStore(codec=torch.float16)).eval()
    examples = text_examples()
    rec.fill(examples, progress=False)
    assert next(iter(rec.store._entries.values())).dtype == torch.float16
    batch = padded_batch(examples)
    with torch.no_grad():
        assert max_diff(bert(**batch), rec(**batch), batch["attention_mask"]) <= 1e-2
