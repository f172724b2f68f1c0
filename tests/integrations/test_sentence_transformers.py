"""sentence-transformers: a recycled SentenceTransformer encodes, trains, saves and loads as the plain one."""

from __future__ import annotations

import pytest
import torch

import layer_recycling as lr

st = pytest.importorskip("sentence_transformers", reason="the st extra: pip install 'layer-recycling[st]'")
from sentence_transformers import losses  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer  # noqa: E402

from layer_recycling.integrations.sentence_transformers import (  # noqa: E402
    recycle_sentence_transformer,
    recycled_models,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

ANCHORS = ["who lives in paris ?", "where is london ?", "what city is good ?", "mary lives in london .",
           "john was boring", "the plot was fun"]
POSITIVES = ["john lives in paris .", "london is a city .", "paris is a good city .", "mary lives in london .",
             "the actor was boring", "the plot was fun"]  # two positives repeat their anchor: 10 distinct texts


def _model(folder) -> st.SentenceTransformer:
    transformer = Transformer(str(folder))
    return st.SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
                                  device="cpu")


@pytest.fixture
def model(tiny_model_dir):
    return _model(tiny_model_dir)


@pytest.mark.parametrize("at", [0, 0.5, 1.0])
def test_encode_equals_the_plain_model_and_the_original_still_runs(model, at):
    want = model.encode(ANCHORS, convert_to_tensor=True)
    recycled = recycle_sentence_transformer(model, at)
    rec = recycled_models(recycled)["0"]
    first, second = (recycled.encode(ANCHORS, convert_to_tensor=True) for _ in range(2))
    assert float((first - want).abs().max()) <= 1e-5 and float((second - want).abs().max()) <= 1e-5
    assert rec.at == round(at * 4) and rec.stats.bottom_examples == len(ANCHORS)  # the second call: all hits
    assert rec.stats.hits == len(ANCHORS)
    assert type(model[0].model).__name__ == "BertModel"  # the user's model is not changed
    assert float((model.encode(ANCHORS, convert_to_tensor=True) - want).abs().max()) == 0


def test_trainer_with_mnrl_runs_the_bottom_only_in_epoch_one_and_saves_a_plain_model(model, tmp_path):
    import datasets
    from transformers import TrainerCallback

    recycled = recycle_sentence_transformer(model, 0.5)
    rec = recycled_models(recycled)["0"]
    before = recycled.encode(ANCHORS, convert_to_tensor=True)  # entries made under inference mode train too
    seen = []

    class Epochs(TrainerCallback):
        def on_epoch_begin(self, *_, **__):
            seen.append(rec.stats.bottom_examples)

    args = st.SentenceTransformerTrainingArguments(
        str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=3, learning_rate=1e-2, report_to=[],
        use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    trainer = st.SentenceTransformerTrainer(
        model=recycled, args=args, train_dataset=datasets.Dataset.from_dict({"anchor": ANCHORS, "positive": POSITIVES}),
        loss=losses.MultipleNegativesRankingLoss(recycled), callbacks=[Epochs()])
    trainer.train()
    seen.append(rec.stats.bottom_examples)
    assert seen == [len(ANCHORS), 10, 10]  # epoch 1 runs the 4 new positives; epoch 2 runs nothing
    assert len(rec.store) == 10  # a text in several pairs (or anchor and positive both) is stored once

    trained = recycled.encode(ANCHORS, convert_to_tensor=True)
    assert float((trained - before).abs().max()) > 1e-3  # the top trained: a save of old weights would show
    recycled.save(str(tmp_path / "saved"))
    loaded = st.SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert type(loaded[0].model).__name__ == "BertModel"
    assert float((loaded.encode(ANCHORS, convert_to_tensor=True) - trained).abs().max()) <= 1e-5

    again = recycle_sentence_transformer(loaded, config=lr.RecycleConfig.from_pretrained(tmp_path / "saved"),
                                         store=rec.store)  # the same bottom: the store is accepted
    assert float((again.encode(POSITIVES, convert_to_tensor=True) - recycled.encode(POSITIVES, convert_to_tensor=True)
                  ).abs().max()) <= 1e-5
    assert recycled_models(again)["0"].stats.bottom_examples == 0  # every text came from the store


def test_a_store_filled_by_another_bottom_is_refused(model, tiny_model_dir):
    recycled = recycle_sentence_transformer(model, 0.5)
    recycled.encode(ANCHORS)
    other = _model(tiny_model_dir)
    with torch.no_grad():
        next(other[0].model.embeddings.parameters()).add_(1.0)
    with pytest.raises(lr.FingerprintMismatch):
        recycle_sentence_transformer(other, 0.5, store=recycled_models(recycled)["0"].store)


def test_bad_inputs_say_what_was_expected(model):
    with pytest.raises(TypeError, match="holds no sentence-transformers Transformer"):
        recycle_sentence_transformer(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.5)
    with pytest.raises(ValueError, match=r"transformers are \['0'\]"):
        recycle_sentence_transformer(model, 0.5, store={"query": lr.MemoryStore()})
    with pytest.raises(ValueError, match="recycled already"):
        recycle_sentence_transformer(recycle_sentence_transformer(model, 0.5), 0.5)
