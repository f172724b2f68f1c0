"""``lr.plan`` against what a fill then does (the store's bytes, the counts), and a fill refused when its disk is
too small, before it writes."""

from __future__ import annotations

import math

import pytest
import torch

import layer_recycling as lr
from conftest import text_examples, text_model, vit_model
from layer_recycling.cli import main
from layer_recycling.plan import Plan
from layer_recycling.stores import sizes


def _examples(n: int = 120) -> list[dict]:
    rows = text_examples(n, seed=3, lengths=(4, 17, 9, 30, 12, 6, 23))
    return rows + rows[:20]  # repeats: planned and filled once


@pytest.mark.parametrize("codec", ["float32", "float16", "int8"])
def test_the_planned_size_is_within_ten_percent_of_the_filled_store(tmp_path, codec):
    model, examples = text_model("bert", "ForSequenceClassification"), _examples()
    plan = lr.plan(model, examples, 0.5, store=tmp_path / "s", codec=codec, sample=16, batch_size=8)
    rec = lr.recycle(model, 0.5, store=lr.DiskStore(tmp_path / "s", codec=codec))
    assert rec.fill(examples, progress=False) == plan.distinct - plan.stored == 120
    rec.store.flush()
    assert plan.examples == 140 and plan.rows_exact
    assert plan.rows == sum(len(e["input_ids"]) for e in examples[:120])
    assert plan.bytes[plan.codec] == pytest.approx(rec.store.volume(), rel=0.10)
    # per token of 32 values: float16 64 bytes, int8 32 codes and 36 of scale and outliers, float32 128
    assert plan.bytes["float16"] < plan.bytes["int8-outliers"] < plan.bytes["float32"]


def test_a_plan_reads_a_generator_once_and_leaves_the_model_as_it_was(tmp_path):
    model = text_model("bert", "ForSequenceClassification")
    model.train()
    model.classifier.weight.grad = torch.ones_like(model.classifier.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    examples = _examples()
    plan = lr.plan(model, (e for e in examples), 0.5, sample=8, batch_size=4)
    assert plan.examples == 140 and plan.distinct == 120 and plan.sample == 8
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()} and model.training
    assert torch.equal(model.classifier.weight.grad, torch.ones_like(model.classifier.weight))
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("classifier.weight"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert plan.free is None and plan.fits is None  # a memory store: no disk to fit on
    assert all(plan.seconds[k] > 0 for k in ("fill", "bottom", "top", "read", "full"))


def test_a_plan_counts_what_the_store_holds_already(tmp_path):
    model, examples = text_model("bert", "ForSequenceClassification"), _examples()
    rec = lr.recycle(model, 0.5, store=lr.DiskStore(tmp_path / "s"))
    rec.fill(examples[:50], progress=False)
    rec.store.flush()
    whole = lr.plan(model, examples, 0.5, sample=8)
    rest = lr.plan(rec, examples, sample=8)
    assert (rest.stored, rest.distinct) == (50, 120)
    assert rest.rows == sum(len(e["input_ids"]) for e in examples[50:120])
    assert rest.bytes["float32"] < whole.bytes["float32"] and rest.free > 0 and rest.fits
    assert lr.plan(rec, examples[:50], sample=8).bytes == dict.fromkeys(rest.bytes, 0)


def test_an_image_model_has_as_many_rows_per_entry_as_its_sample():
    model = vit_model()
    g = torch.Generator().manual_seed(0)
    images = [{"pixel_values": torch.randn(3, 16, 16, generator=g), "label": i % 3} for i in range(12)]
    plan = lr.plan(model, images, 0.5, sample=4, batch_size=4)
    assert plan.rows_exact and plan.rows == 12 * 17 and plan.feature == (32,)  # 16 patches and the CLS token


def test_payoff_epochs_from_the_seconds_per_example():
    plan = Plan(at=3, num_layers=6, examples=100, distinct=50, stored=0, rows=500, rows_exact=True, feature=(8,),
                codec="float32", bytes={}, free=None, sample=8, batch_size=4,
                seconds={"fill": 2.0, "bottom": 1.5, "top": 1.0, "read": 0.5, "full": 4.0})
    assert plan.fill_seconds == 100.0
    assert plan.epoch_seconds() == {"full": 400.0, "frozen": 250.0, "recycled": 150.0}
    assert plan.payoff("frozen") == pytest.approx(1.0) and plan.payoff("full") == pytest.approx(100 / 250)
    slow_read = Plan(**{**plan.__dict__, "seconds": {**plan.seconds, "read": 1.5}})
    assert math.isinf(slow_read.payoff("frozen"))


def test_a_fill_the_disk_cannot_hold_is_refused_before_it_writes(tmp_path, monkeypatch):
    model, examples = text_model("bert", "ForSequenceClassification"), _examples()
    planned = lr.plan(model, examples, 0.5, store=tmp_path / "s", sample=8)
    monkeypatch.setattr(sizes, "free_bytes", lambda path: planned.bytes["float32"] // 2)
    rec = lr.recycle(model, 0.5, store=lr.DiskStore(tmp_path / "s"))
    with pytest.raises(lr.DiskFull, match=r"about 120 entries .* KiB, but the disk of .* KiB free\. Nothing was "
                                          r"written"):
        rec.fill(examples, progress=False)
    assert len(rec.store) == 0 and not list((tmp_path / "s").glob("*.data"))
    monkeypatch.setattr(sizes, "free_bytes", lambda path: planned.bytes["float32"] * 2)
    assert rec.fill(examples, progress=False) == 120


def test_a_resumed_fill_predicts_from_what_is_left(tmp_path, monkeypatch):
    """Half the examples stored: the room a rerun needs is that of the other half."""
    model, examples = text_model("bert", "ForSequenceClassification"), _examples()
    rec = lr.recycle(model, 0.5, store=lr.DiskStore(tmp_path / "s"))
    rec.fill(examples[:60], progress=False)
    rest = lr.plan(rec, examples, sample=8)
    monkeypatch.setattr(sizes, "free_bytes", lambda path: int(rest.bytes["float32"] * 1.5))
    assert rec.fill(examples, progress=False) == 60


def test_recycle_plan_on_the_command_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    csv = tmp_path / "reviews.csv"
    csv.write_text("text,label\n" + "\n".join(f"the film was {'good ' * (i % 5 + 1)},{i % 2}" for i in range(30)))
    common = ["--dataset", str(csv), "--model", str(tiny_model_dir), "--at", "0.5", "--store", str(tmp_path / "s"),
              "--sample", "8"]
    assert main(["plan", *common]) == 0
    assert "store growth: bfloat16" in capsys.readouterr().out and not (tmp_path / "s").exists()
    monkeypatch.setattr(sizes, "free_bytes", lambda path: 10 if str(tmp_path) in str(path) else 1 << 40)
    assert main(["plan", *common, "--json"]) == 3
    assert '"fits": false' in capsys.readouterr().out


def test_a_dual_model_is_planned_tower_by_tower():
    import transformers as T

    config = T.CLIPConfig(text_config=dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=37),
                          vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=37, image_size=16, patch_size=4), projection_dim=16)
    with pytest.raises(TypeError, match=r"plan\(\) takes a model of one bottom; CLIPModel is recycled as "
                                        r"RecycledDual .* lr.plan\(model.text_model"):
        lr.plan(T.CLIPModel(config), [{"input_ids": [1, 2, 3]}], 0.5)
