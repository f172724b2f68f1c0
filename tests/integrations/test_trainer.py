"""HF Trainer: default arguments train from the store; RecycledTrainer checkpoints are standard model folders."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import layer_recycling as lr
from conftest import text_examples, text_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _args(tmp_path, **kw) -> T.TrainingArguments:
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, per_device_eval_batch_size=8,
                learning_rate=5e-3, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                disable_tqdm=True, seed=0)
    return T.TrainingArguments(**{**base, **kw})


def test_the_default_trainer_trains_evaluates_and_predicts_from_the_store(tmp_path):
    model = text_model("bert", "ForSequenceClassification")
    examples = text_examples(24)
    rec = lr.recycle(model, at=2)
    dataset = rec.dataset(examples, progress=False)
    calls = rec.stats.bottom_calls

    def accuracy(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    trainer = T.Trainer(model=rec, args=_args(tmp_path, num_train_epochs=8, gradient_accumulation_steps=2),
                        train_dataset=dataset, eval_dataset=dataset, data_collator=dataset.collate,
                        compute_metrics=accuracy)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before * 0.8 and "eval_accuracy" in after
    assert trainer.predict(dataset).predictions.shape == (24, 3)
    assert rec.stats.bottom_calls == calls  # every batch came from the store


def test_the_default_trainer_keeps_the_input_columns_of_a_tokenized_datasets_table(tmp_path):
    """``remove_unused_columns`` keeps the columns ``forward`` names: input_ids was hidden in ``**inputs`` and
    dropped, and the Trainer failed in its collator. Served through the store: misses once, then hits."""
    datasets = pytest.importorskip("datasets")
    rows = [e for e in text_examples(8) if len(e["input_ids"]) == len(text_examples(8)[0]["input_ids"])]
    table = datasets.Dataset.from_list([{"input_ids": e["input_ids"], "attention_mask": [1] * len(e["input_ids"]),
                                         "label": e["label"], "note": "unused"} for e in rows])
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2)
    trainer = T.Trainer(model=rec, args=_args(tmp_path, num_train_epochs=2), train_dataset=table, eval_dataset=table)
    trainer.train()
    assert "eval_loss" in trainer.evaluate()
    assert rec.stats.misses == len(rows) and rec.stats.hits >= 2 * len(rows)


@pytest.mark.parametrize("family, head, untie", [("bert", "ForSequenceClassification", False),
                                                 ("gpt2", "LMHeadModel", False), ("gpt2", "LMHeadModel", True)])
def test_recycled_trainer_checkpoints_load_with_from_pretrained(tmp_path, family, head, untie):
    from layer_recycling.integrations.trainer import RecycledTrainer

    model = text_model(family, head)
    examples = [dict(e, labels=e["input_ids"]) if head == "LMHeadModel" else e for e in text_examples(12)]
    rec = lr.recycle(model, at=2, untie=untie)
    dataset = rec.dataset(examples, progress=False)
    trainer = RecycledTrainer(model=rec, args=_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2),
                              train_dataset=dataset, data_collator=dataset.collate)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    loaded = getattr(T, type(model).__name__).from_pretrained(tmp_path / "final").eval()
    batch = {"input_ids": torch.tensor([examples[0]["input_ids"]])}
    with torch.no_grad():
        want, got = rec.eval()(**batch).logits, loaded(**batch).logits
    assert float((want - got).abs().max()) <= 1e-5
    assert (tmp_path / "out" / "checkpoint-2" / "config.json").exists()
    assert lr.RecycleConfig.recorded(tmp_path / "final")["at_blocks"] == 2
    again = lr.recycle(loaded, config=lr.RecycleConfig.from_pretrained(tmp_path / "final"), store=rec.store)
    assert again.at == 2  # the same store accepts the reloaded model: its bottom did not change


def test_recycled_trainer_resumes_from_a_checkpoint(tmp_path):
    from layer_recycling.integrations.trainer import RecycledTrainer

    examples = text_examples(12)

    def trainer(steps):
        torch.manual_seed(0)
        rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2).eval()
        dataset = rec.dataset(examples, progress=False)
        return rec, RecycledTrainer(model=rec, args=_args(tmp_path, max_steps=steps, save_strategy="steps",
                                                          save_steps=2), train_dataset=dataset,
                                    data_collator=dataset.collate)

    rec, first = trainer(4)
    first.train()
    resumed_rec, resumed = trainer(4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    worst = max(float((a - b).abs().max()) for a, b in zip(rec.top.parameters(), resumed_rec.top.parameters()))
    assert worst <= 1e-5  # the resumed run ends where the uninterrupted one did


def test_recycled_trainer_groups_by_the_stored_lengths_in_training_and_evaluation(tmp_path):
    """The stock Trainer measures each item's ``input_ids`` to group by length; a stored item has none. The
    samplers take the lengths the store keeps, and the loaders' batches come in their grouped order."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from layer_recycling.integrations.trainer import RecycledTrainer

    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2)
    examples = text_examples(16, lengths=(3, 11, 5, 8, 2, 7))
    dataset = rec.dataset(examples, progress=False)
    assert list(dataset.lengths) == [len(e["input_ids"]) for e in examples]
    trainer = RecycledTrainer(model=rec, args=_args(tmp_path, max_steps=2, train_sampling_strategy="group_by_length"),
                              train_dataset=dataset, eval_dataset=dataset, data_collator=dataset.collate)
    samplers = {"train": (trainer._get_train_sampler(), 4, trainer.get_train_dataloader()),
                "eval": (trainer._get_eval_sampler(dataset), 8, trainer.get_eval_dataloader())}
    for name, (sampler, batch_size, loader) in samplers.items():
        assert isinstance(sampler, LengthGroupedSampler) and sampler.batch_size == batch_size, name
        assert list(sampler.lengths) == list(dataset.lengths), name
        # 16 examples make mega-batches of one batch (HF: len // (4 * batch size)): each sorted longest first,
        # and the longest example leads the epoch
        batches = [batch["attention_mask"].sum(1).tolist() for batch in loader]
        rows = [n for b in batches for n in b]
        assert sorted(rows) == sorted(dataset.lengths) and rows[0] == max(rows), name
        assert all(b == sorted(b, reverse=True) for b in batches), name
    trainer.train()
    assert "eval_loss" in trainer.evaluate()
