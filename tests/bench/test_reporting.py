"""The report: seeds averaged, speedups as ratios to full and frozen, the Pareto front, the recommendation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from layer_recycling.bench import reporting as rp
from layer_recycling.bench.result import Result


def _result(label, setting, level, score, end_to_end, seed=0, codec="float32") -> Result:
    return Result.from_json({"task": "seq-cls", "dataset": "toy", "model": "tiny", "setting": setting, "label": label,
            "level": level, "at": round(level * 6), "codec": None if setting in ("full", "frozen") else codec,
            "metric": "accuracy", "score": score, "fill_s": 1.0, "train_s_per_epoch": end_to_end / 2,
            "end_to_end_s": end_to_end, "infer_hits_per_s": 100.0, "infer_misses_per_s": 50.0, "cache_bytes": 2e6,
            "seed": seed, "meta": {}})


RESULTS = [
    _result("full", "full", 0.0, 80.0, 100.0), _result("full", "full", 0.0, 82.0, 100.0, seed=1),
    _result("frozen 50%", "frozen", 0.5, 80.5, 70.0),
    _result("recycled 25%", "recycled", 0.25, 81.5, 80.0),
    _result("recycled 50%", "recycled", 0.5, 80.2, 50.0),
    _result("recycled 75%", "recycled", 0.75, 78.0, 25.0),
    _result("recycled 0%", "recycled", 0.0, 81.0, 120.0),
]


def test_summary_averages_seeds_and_takes_ratios():
    rows = {r["label"]: r for r in rp.summarize(RESULTS)}
    full = rows["full"]
    assert full["score"] == 81.0 and full["seeds"] == 2 and full["score_sd"] == pytest.approx(2 ** 0.5)
    assert rows["recycled 50%"]["speedup"] == 2.0 and rows["recycled 50%"]["vs_frozen"] == 1.4
    assert rows["recycled 50%"]["drop"] == pytest.approx(0.8)


def test_recommendation_is_the_most_recycled_within_the_drop_and_faster():
    rows = rp.summarize(RESULTS)
    assert rp.recommend(rows, max_drop=1.0)["label"] == "recycled 50%"  # 75% drops 3 points
    assert rp.recommend(rows, max_drop=3.0)["label"] == "recycled 75%"
    assert rp.recommend(rows, max_drop=0.5)["label"] == "recycled 25%"  # it gains 0.5 points
    assert rp.recommend(rows, max_drop=-1.0) is None  # nothing gains a point; 0% is slower than full anyway
    assert "keep fine-tuning in full" in rp.recommendation_text(rows, -1.0)


def test_pareto_front_keeps_only_undominated_settings():
    front = {r["label"] for r in rp.pareto(rp.summarize(RESULTS))}
    # full is beaten by 25% (faster, better), 0% by 25%; frozen is faster than 25% and better than 50%
    assert front == {"frozen 50%", "recycled 25%", "recycled 50%", "recycled 75%"}


def test_report_writes_markdown_and_a_png(tmp_path):
    for i, r in enumerate(RESULTS):
        (tmp_path / f"{i}.json").write_text(json.dumps(r.to_json()))
    text = rp.report(tmp_path, max_drop=1.0)
    assert "| recycled 50% | 3 | - | 80.20 | +0.80 | 2.00x | 1.40x |" in text  # no validation drop in these results
    assert "| full | 0 | - | 81.00 ± 12.71 | +0.00 ± 0.00 |" in text  # 2 seeds: 12.706 * sd / sqrt(2)
    assert "chosen on the test split (these results have no validation scores" in text
    assert (tmp_path / "report.md").read_text() == text
    png = (tmp_path / "toy-tiny.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_a_folder_without_results_is_refused(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"score": 1}))
    with pytest.raises(ValueError, match="lacks"):
        rp.load(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no result files"):
        rp.load(tmp_path / "empty")


def test_the_recommendation_is_chosen_on_validation_and_checked_on_test():
    def run(label, setting, level, score, val, seconds):
        return dataclasses.replace(_result(label, setting, level, score, seconds), val_score=val)

    results = [run("full", "full", 0.0, 80.0, 80.0, 100.0),
               run("recycled 50%", "recycled", 0.5, 79.5, 76.0, 50.0),   # test says fine, validation says no
               run("recycled 25%", "recycled", 0.25, 78.0, 79.5, 70.0)]  # validation says fine, test drops 2
    rows = rp.summarize(results)
    assert rp.recommend(rows, max_drop=1.0)["label"] == "recycled 25%"
    text = rp.recommendation_text(rows, 1.0)
    assert "chosen on validation" in text and "did NOT stay within" in text
    for r in results:
        r.val_score = None
    old = rp.summarize(results)  # results written before validation splits: the test drop, with a note saying so
    assert rp.recommend(old, 1.0)["label"] == "recycled 50%"
    assert "no validation scores" in rp.recommendation_text(old, 1.0)


def test_spread_figures_on_known_values_and_a_borderline_flag():
    assert rp.interval([1.0, 2.0, 3.0]) == (2.0, 1.0, pytest.approx(4.303 / 3 ** 0.5))
    assert rp.interval([5.0]) == (5.0, None, None)
    results = []
    for seed, (full_val, rec_val) in enumerate([(80.0, 80.0), (80.0, 78.0), (80.0, 80.5)]):
        for label, setting, level, val, seconds in (("full", "full", 0.0, full_val, 100.0),
                                                    ("recycled 50%", "recycled", 0.5, rec_val, 50.0 + seed)):
            results.append(dataclasses.replace(_result(label, setting, level, val, seconds, seed=seed), val_score=val))
    rows = rp.summarize(results)
    row = next(r for r in rows if r["label"] == "recycled 50%")
    drops = [0.0, 2.0, -0.5]  # mean 0.5, sd 1.3229
    assert row["val_drop"] == pytest.approx(0.5)
    assert row["drop_ci"] == pytest.approx(4.303 * 1.3228756555 / 3 ** 0.5)
    assert row["speedup_sd"] == pytest.approx(rp.interval([100 / 50, 100 / 51, 100 / 52])[1])
    text = rp.recommendation_text(rows, max_drop=1.0)
    assert "Within the target on average, but the seeds cannot tell it from a drop of" in text
    assert sum(drops) / 3 == pytest.approx(0.5)


def _with_val(label, setting, level, score, val, seconds, seed=0):
    return dataclasses.replace(_result(label, setting, level, score, seconds, seed=seed), val_score=val)


def test_report_names_validation_when_nothing_qualifies(tmp_path):
    # on validation every faster recycled setting drops 3+ points; on test one of them stays within 1 point
    results = [_with_val("full", "full", 0.0, 80.0, 80.0, 100.0),
               _with_val("recycled 50%", "recycled", 0.5, 79.5, 77.0, 50.0),
               _with_val("recycled 75%", "recycled", 0.75, 70.0, 72.0, 30.0)]
    for i, r in enumerate(results):
        (tmp_path / f"{i}.json").write_text(json.dumps(r.to_json()))
    rp.report(tmp_path, max_drop=1.0)
    text = (tmp_path / "report.md").read_text()
    assert "| recycled 50% | 3 | +3.00 | 79.50 | +0.50 |" in text  # validation drop beside test score and drop
    assert ("Rule: the most recycled setting whose mean drop against full fine-tuning is at most 1.0 points and that "
            "is faster end to end than full fine-tuning, chosen on the validation split, then checked on the test "
            "split.") in text
    assert ("Chosen on validation: no recycled setting is both faster than full fine-tuning and within 1.0 points "
            "of its validation score") in text
    assert "On test, 1 faster recycled setting(s) stayed within 1.0 points there (recycled 50%)" in text
    results[1].score = 75.0  # now test agrees: nothing within the target there either
    assert "On test, no faster recycled setting stayed within 1.0 points there either" in rp.markdown(
        rp.summarize(results), "t", 1.0)


def test_the_table_gives_each_drop_with_its_interval_over_seeds():
    results = []
    for seed, (full, rec) in enumerate([(80.0, 79.0), (82.0, 80.0), (81.0, 81.0)]):
        results += [_with_val("full", "full", 0.0, full, full + 1, 100.0, seed=seed),
                    _with_val("recycled 50%", "recycled", 0.5, rec, rec, 50.0, seed=seed)]
    text = rp.markdown(rp.summarize(results), "t", max_drop=3.0)
    half = 4.303 / 3 ** 0.5  # t(2) / sqrt(3): the 95% half width per unit of sd
    # validation drops 2, 3, 1 (sd 1); test scores 79, 80, 81 (sd 1); test drops 1, 2, 0 (sd 1)
    assert f"| recycled 50% | 3 | +2.00 ± {half:.2f} | 80.00 ± {half:.2f} | +1.00 ± {half:.2f} |" in text
    assert "Mean ± 95% interval over 3 seeds" in text and "(chosen on validation)" in text


def test_no_setting_is_recommended_against_a_full_fine_tuning_that_learned_nothing():
    # full fine-tuning ends where predicting the most frequent label everywhere does: every setting "holds"
    results = [_with_val("full", "full", 0.0, 52.0, 54.0, 100.0), _with_val("recycled 75%", "recycled", 0.75, 52.0,
                                                                            54.0, 30.0)]
    for r in results:
        r.constant_score, r.constant_val_score = 52.0, 54.0
    rows = rp.summarize(results)
    assert rp.recommend(rows, 1.0) is None
    assert rp.recommendation_text(rows, 1.0).startswith(
        "Full fine-tuning scored 54.00 accuracy on validation, no better than predicting the most frequent training "
        "label everywhere (54.00): it learned nothing")
    results[0].val_score = 60.0  # above the floor on validation: the choice stands
    assert rp.recommend(rp.summarize(results), 1.0) is None  # 75% now drops 6 points
    results[1].val_score = 59.5
    assert rp.recommend(rp.summarize(results), 1.0)["label"] == "recycled 75%"
    for r in results:
        r.constant_score = r.constant_val_score = None  # older results, retrieval: no floor known, no check
    results[0].val_score = 54.0
    results[1].val_score = 54.0
    assert rp.recommend(rp.summarize(results), 1.0)["label"] == "recycled 75%"
