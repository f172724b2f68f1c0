"""Hand-computed values and edge cases for every metric in ``layer_recycling.bench.metrics``."""

from __future__ import annotations

import numpy as np
import pytest

from layer_recycling.bench.metrics import (
    METRICS,
    accuracy,
    entity_f1,
    entity_spans,
    macro_f1,
    normalize_answer,
    squad_exact_match,
    squad_f1,
)

# --- accuracy and macro F1 ------------------------------------------------------------------------

def test_accuracy_hand_computed():
    # 3 of 4 positions agree: 100 * 3 / 4 = 75.
    assert accuracy([0, 1, 2, 2], [0, 1, 2, 1]) == 75.0
    assert isinstance(accuracy([1], [1]), float)


def test_accuracy_accepts_arrays_and_strings():
    assert accuracy(np.array([1, 0]), np.array([1, 1])) == 50.0
    assert accuracy(["pos", "neg"], ["pos", "neg"]) == 100.0


def test_macro_f1_hand_computed():
    labels = [0, 0, 1, 1, 2]
    preds = [0, 1, 1, 1, 0]
    # class 0: tp 1, fp 1 (pos 4), fn 1 (pos 1) -> F1 = 2*1 / (2*1 + 1 + 1) = 0.5
    # class 1: tp 2, fp 1 (pos 1), fn 0          -> F1 = 2*2 / (2*2 + 1 + 0) = 0.8
    # class 2: tp 0, fn 1                         -> F1 = 0
    # macro = (0.5 + 0.8 + 0) / 3 = 0.4333...
    assert macro_f1(preds, labels) == pytest.approx(100 * 1.3 / 3)


def test_macro_f1_counts_classes_only_predicted():
    # class 0: tp 1, fn 1 -> F1 = 2/(2+1) = 2/3; class 1 (never true, predicted once) -> F1 = 0.
    # macro = (2/3 + 0) / 2 = 1/3.
    assert macro_f1([0, 1], [0, 0]) == pytest.approx(100 / 3)


def test_macro_f1_skips_classes_absent_from_both():
    # Class 2 never occurs, so it cannot drag the mean down: both present classes are perfect.
    assert macro_f1([0, 1], [0, 1]) == 100.0


@pytest.mark.parametrize("metric", [accuracy, macro_f1])
def test_classification_length_mismatch(metric):
    with pytest.raises(ValueError, match="preds has 2 items but labels has 3; expected equal lengths"):
        metric([0, 1], [0, 1, 1])


@pytest.mark.parametrize("metric", [accuracy, macro_f1])
def test_classification_empty(metric):
    with pytest.raises(ValueError, match="preds and labels are empty; a metric needs at least one item"):
        metric([], [])


# --- entity-level F1 ------------------------------------------------------------------------------

def test_entity_spans_basic_chunks():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert entity_spans(tags) == {("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 6)}


def test_entity_at_end_of_sentence():
    assert entity_spans(["O", "B-ORG", "I-ORG"]) == {("ORG", 1, 3)}


def test_i_after_o_starts_an_entity():
    # conlleval's lenient rule: a stray I-T opens a chunk, and following I-T extend it.
    assert entity_spans(["O", "I-PER", "I-PER", "O"]) == {("PER", 1, 3)}
    assert entity_spans(["I-PER"]) == {("PER", 0, 1)}


def test_type_change_makes_two_entities():
    assert entity_spans(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}


def test_all_o_has_no_entities():
    assert entity_spans(["O", "O"]) == set()
    assert entity_spans([]) == set()


def test_entity_f1_hand_computed():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-MISC"]]
    # gold: PER(0,2) LOC(3,4) | ORG(0,1) -> 3 entities; predicted: PER(0,2) | ORG(0,1) MISC(1,2) -> 3.
    # correct: PER, ORG -> tp 2; P = 2/3, R = 2/3, F1 = 2/3.
    assert entity_f1(true, pred) == pytest.approx(200 / 3)


def test_entity_f1_boundary_must_match_exactly():
    # gold PER(0,2); predicted PER(0,1): wrong end -> tp 0, F1 = 0.
    assert entity_f1([["B-PER", "I-PER"]], [["B-PER", "O"]]) == 0.0
    # same span, wrong type -> 0.
    assert entity_f1([["B-PER", "I-PER"]], [["B-LOC", "I-LOC"]]) == 0.0


def test_entity_f1_lenient_start_matches_b_start():
    # "O I-PER" and "O B-PER" both denote PER(1,2), so the prediction is right: F1 = 100.
    assert entity_f1([["O", "B-PER"]], [["O", "I-PER"]]) == 100.0


def test_entity_f1_all_o_predictions_and_all_o_gold():
    # Predicting nothing: tp 0 of 1 gold -> F1 = 0.
    assert entity_f1([["B-PER", "O"]], [["O", "O"]]) == 0.0
    # No entities anywhere: seqeval's convention scores 0.0 (no division by zero).
    assert entity_f1([["O", "O"]], [["O", "O"]]) == 0.0
    # An empty sentence contributes nothing: 1 of 1 right -> 100.
    assert entity_f1([[], ["B-X"]], [[], ["B-X"]]) == 100.0


def test_entity_f1_sentence_length_mismatch():
    with pytest.raises(ValueError, match="sentence 1 has 3 true tags but 2 predicted tags"):
        entity_f1([["O"], ["O", "O", "O"]], [["O"], ["O", "O"]])


def test_entity_f1_sentence_count_mismatch():
    with pytest.raises(ValueError, match="true_tags has 2 items but pred_tags has 1"):
        entity_f1([["O"], ["O"]], [["O"]])


def test_entity_f1_rejects_non_bio_tags():
    with pytest.raises(ValueError, match=r"tag 'S-PER' at sentence 0, position 1 is not BIO \(IOB2\)"):
        entity_f1([["O", "S-PER"]], [["O", "O"]])


def test_entity_f1_rejects_flat_tag_list():
    with pytest.raises(TypeError, match="sentence 0 is a string .* wrap a single sentence as \\[tags\\]"):
        entity_f1(["B-PER"], ["B-PER"])


# --- SQuAD ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, normalized", [
    ("The Cat!", "cat"),
    ("  a  quick, brown fox. ", "quick brown fox"),
    ("Theatre", "theatre"),  # "the" inside a word is kept
    ("an apple and THE pear", "apple and pear"),
    ("Denver Broncos", "denver broncos"),
    ("", ""),
])
def test_normalize_answer_official_examples(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match_hand_computed():
    preds = ["The Cat!", "dog", "Denver"]
    golds = [["cat"], ["a wolf", "Dog."], ["Denver Broncos"]]
    # q1 "cat" == "cat" -> 1; q2 matches "Dog." -> 1; q3 "denver" != "denver broncos" -> 0. 2/3.
    assert squad_exact_match(preds, golds) == pytest.approx(200 / 3)


def test_squad_f1_hand_computed():
    preds = ["Denver", "the big red dog", "nothing"]
    golds = [["Denver Broncos"], ["red dog", "big dog"], ["cat"]]
    # q1: pred [denver], gold [denver broncos]: overlap 1, P = 1/1, R = 1/2 -> F1 = 2/3.
    # q2: pred [big red dog]; vs [red dog]: overlap 2, P 2/3, R 1 -> F1 = 0.8;
    #     vs [big dog]: the same 0.8 -> max 0.8.
    # q3: no overlap -> 0.  Mean = (2/3 + 0.8 + 0) / 3.
    assert squad_f1(preds, golds) == pytest.approx(100 * (2 / 3 + 0.8) / 3)


def test_squad_f1_counts_repeated_tokens_as_a_bag():
    # pred [dog dog], gold [dog]: overlap min(2, 1) = 1, P = 1/2, R = 1 -> F1 = 2/3.
    assert squad_f1(["dog dog"], [["dog"]]) == pytest.approx(200 / 3)


def test_squad_empty_prediction():
    # An empty prediction has no tokens: EM 0 and F1 0 against a non-empty gold answer.
    assert squad_exact_match([""], [["cat"]]) == 0.0
    assert squad_f1([""], [["cat"]]) == 0.0
    # A prediction of only punctuation and articles normalises to "" too.
    assert squad_f1(["The ..."], [["cat"]]) == 0.0


@pytest.mark.parametrize("metric", [squad_exact_match, squad_f1])
def test_squad_length_mismatch(metric):
    with pytest.raises(ValueError, match="predictions has 1 items but answers has 2"):
        metric(["a"], [["a"], ["b"]])


@pytest.mark.parametrize("metric", [squad_exact_match, squad_f1])
def test_squad_answers_must_be_lists(metric):
    with pytest.raises(ValueError, match=r"answers\[1\] is 'cat'; expected a non-empty list"):
        metric(["cat", "cat"], [["cat"], "cat"])
    with pytest.raises(ValueError, match=r"answers\[0\] is \[\]; expected a non-empty list"):
        metric(["cat"], [[]])


# --- registry -------------------------------------------------------------------------------------

def test_registry_calls_every_metric_predictions_first():
    assert set(METRICS) == {"accuracy", "macro_f1", "entity_f1", "exact_match", "squad_f1"}
    assert METRICS["accuracy"]([1, 0], [1, 1]) == 50.0
    assert METRICS["exact_match"](["The Cat!"], [["cat"]]) == 100.0
    # Error messages keep their meaning when called through the registry (predictions first).
    with pytest.raises(ValueError, match="sentence 0 has 1 true tags but 2 predicted tags"):
        METRICS["entity_f1"]([["O", "O"]], [["O"]])


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_returns_points_in_range(name):
    inputs = {
        "accuracy": ([0, 1], [1, 1]),
        "macro_f1": ([0, 1], [1, 1]),
        "entity_f1": ([["B-A", "O"]], [["B-A", "I-A"]]),
        "exact_match": (["x"], [["x y"]]),
        "squad_f1": (["x"], [["x y"]]),
    }[name]
    value = METRICS[name](*inputs)
    assert isinstance(value, float) and 0.0 <= value <= 100.0
