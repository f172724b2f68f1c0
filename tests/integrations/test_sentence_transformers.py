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
    model[0].can_flatten_inputs = True  # as under flash attention: ST would pack a batch into one sequence
    recycled = recycle_sentence_transformer(model, at)
    model[0].can_flatten_inputs = False
    assert recycled[0].can_flatten_inputs is False  # the recycled copy keys padded rows: it never packs
    rec = recycled_models(recycled)["0"]
    first, second = (recycled.encode(ANCHORS, convert_to_tensor=True) for _ in range(2))
    assert float((first - want).abs().max()) <= 1e-5 and float((second - want).abs().max()) <= 1e-5
    assert rec.at == round(at * 4) and rec.stats.bottom_examples == len(ANCHORS)  # the second call: all hits
    assert rec.stats.hits == len(ANCHORS)
    assert type(model[0].model).__name__ == "BertModel"  # the user's model is not changed
    assert float((model.encode(ANCHORS, convert_to_tensor=True) - want).abs().max()) == 0


def test_truncating_the_copy_leaves_the_original_alone(model):
    """The copy shared the original's tokenizer: its max_seq_length truncated the original's inputs too."""
    want = model.encode(ANCHORS, convert_to_tensor=True)
    recycled = recycle_sentence_transformer(model, 0.5)
    length = model.max_seq_length
    recycled.max_seq_length = 3
    assert model.max_seq_length == length and recycled.max_seq_length == 3
    assert float((model.encode(ANCHORS, convert_to_tensor=True) - want).abs().max()) == 0
    model.max_seq_length = 3
    short = model.encode(ANCHORS, convert_to_tensor=True)
    assert float((recycled.encode(ANCHORS, convert_to_tensor=True) - short).abs().max()) <= 1e-5


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


def test_a_plain_checkpoints_state_dict_loads_into_a_recycled_copy(model, tiny_model_dir):
    """What the trainer does on resume_from_checkpoint and load_best_model_at_end."""
    trained = _model(tiny_model_dir)
    with torch.no_grad():
        trained[0].model.encoder.layer[3].output.dense.weight.mul_(2.0)  # a top weight that differs
    recycled = recycle_sentence_transformer(model, 0.5)
    assert float((recycled.encode(ANCHORS, convert_to_tensor=True) - trained.encode(ANCHORS, convert_to_tensor=True)
                  ).abs().max()) > 1e-3
    recycled.load_state_dict(trained.state_dict())
    assert float((recycled.encode(ANCHORS, convert_to_tensor=True) - trained.encode(ANCHORS, convert_to_tensor=True)
                  ).abs().max()) <= 1e-5
    with torch.no_grad():
        trained[0].model.encoder.layer[0].output.dense.weight.mul_(2.0)  # a bottom weight: the store would be stale
    with pytest.raises(RuntimeError, match="other weights for the frozen bottom"):
        recycled.load_state_dict(trained.state_dict())


@pytest.mark.parametrize("loss, columns", [
    ("CoSENTLoss", {"sentence1": ANCHORS, "sentence2": POSITIVES, "score": [1.0, 0.8, 0.6, 1.0, 0.2, 1.0]}),
    ("CosineSimilarityLoss", {"sentence1": ANCHORS, "sentence2": POSITIVES, "score": [1.0, 0.8, 0.6, 1.0, 0.2, 1.0]}),
    ("TripletLoss", {"anchor": ANCHORS, "positive": POSITIVES, "negative": POSITIVES[1:] + POSITIVES[:1]}),
    ("ContrastiveLoss", {"sentence1": ANCHORS, "sentence2": POSITIVES, "label": [1, 0, 1, 1, 0, 1]}),
])
def test_the_pair_and_triplet_losses_train_from_the_store(model, tmp_path, loss, columns):
    import datasets

    recycled = recycle_sentence_transformer(model, 0.5)
    rec = recycled_models(recycled)["0"]
    top = rec.top.model.encoder.layer[-1].output.dense.weight
    was = top.detach().clone()
    args = st.SentenceTransformerTrainingArguments(
        str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=6, learning_rate=1e-2, report_to=[],
        use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    st.SentenceTransformerTrainer(model=recycled, args=args, train_dataset=datasets.Dataset.from_dict(columns),
                                  loss=getattr(losses, loss)(recycled)).train()
    assert not torch.equal(top, was)  # the top trained
    assert rec.stats.bottom_examples == len(rec.store) <= 12  # each distinct text ran the bottom once, in step 1


def test_a_router_recycles_its_query_and_document_transformers(tiny_model_dir):
    from sentence_transformers.base.modules.router import Router

    query, document = Transformer(str(tiny_model_dir)), Transformer(str(tiny_model_dir))
    pooling = Pooling(query.get_embedding_dimension(), "mean")
    model = st.SentenceTransformer(modules=[Router.for_query_document([query, pooling], [document, pooling])],
                                   device="cpu")
    want_q, want_d = model.encode_query(ANCHORS, convert_to_tensor=True), model.encode_document(POSITIVES,
                                                                                              convert_to_tensor=True)
    with pytest.raises(ValueError, match="one store given for 2 transformers"):
        recycle_sentence_transformer(model, 0.5, store=lr.MemoryStore())
    recycled = recycle_sentence_transformer(model, 0.5)
    got_q, got_d = recycled.encode_query(ANCHORS, convert_to_tensor=True), recycled.encode_document(
        POSITIVES, convert_to_tensor=True)
    assert float((got_q - want_q).abs().max()) <= 1e-5 and float((got_d - want_d).abs().max()) <= 1e-5
    stores = {name: len(r.store) for name, r in recycled_models(recycled).items()}
    assert sorted(stores.values()) == [6, 6] and len(stores) == 2  # each route's texts in its own store


def test_an_evaluator_scores_the_recycled_model_as_the_plain_one(model):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    evaluator = EmbeddingSimilarityEvaluator(ANCHORS, POSITIVES, [1.0, 0.8, 0.6, 1.0, 0.2, 1.0], name="pairs")
    want = evaluator(model)
    got = evaluator(recycle_sentence_transformer(model, 0.5))
    # Two pairs repeat their text (cosine 1 up to the last bit): Spearman over that tie flips with float noise on
    # another CPU, so only the continuous statistic is compared within a tolerance; ranks are not.
    pearson = [k for k in want if "pearson" in k]
    assert want.keys() == got.keys() and pearson and all(abs(want[k] - got[k]) <= 1e-5 for k in pearson)


def test_the_copy_has_hooks_and_children_of_its_own(model):
    recycled = recycle_sentence_transformer(model, 0.5)
    recycled[0].register_forward_hook(lambda *_: None)
    recycled.append(torch.nn.Identity())
    assert not model[0]._forward_hooks and len(model) == 2 and len(recycled) == 3


def test_training_the_copy_leaves_the_original_as_it_was_unless_weights_are_shared(model):
    want = model.encode(ANCHORS, convert_to_tensor=True)
    flags = [p.requires_grad for p in model.parameters()]
    recycled = recycle_sentence_transformer(model, 0.5)
    recycled.encode(ANCHORS)
    assert recycled.stats is recycled_models(recycled)["0"].stats and recycled.stats.misses == len(ANCHORS)
    params = [p for p in recycled.parameters() if p.requires_grad]
    for p in params:  # a step of training: every trainable weight of the copy moves
        p.data.add_(0.1)
    assert float((recycled.encode(ANCHORS, convert_to_tensor=True) - want).abs().max()) > 1e-3
    assert torch.equal(model.encode(ANCHORS, convert_to_tensor=True), want)
    assert [p.requires_grad for p in model.parameters()] == flags
    shared = recycle_sentence_transformer(model, 0.5, share_weights=True)
    next(p for p in shared.parameters() if p.requires_grad).data.add_(0.1)
    assert not torch.equal(model.encode(ANCHORS, convert_to_tensor=True), want)  # the documented sharing
    assert not all(p.requires_grad for p in model.parameters())


def test_training_batches_from_a_datasets_dataset_leave_nothing_per_text(tiny_model_dir, tmp_path):
    """The trainer's ``datasets.Dataset`` is its own; batches served from (and stored to) a DiskStore leave nothing
    per text in the recycled transformer's pipeline and store once committed."""
    import datasets
    from conftest import WORDS
    from helpers import reachable_bytes

    def served(n: int) -> int:
        texts = [" ".join(WORDS[i // len(WORDS) ** j % len(WORDS)] for j in range(3)) for i in range(n)]
        source = datasets.Dataset.from_dict({"anchor": texts})
        recycled = recycle_sentence_transformer(_model(tiny_model_dir), 0.5, store=lr.DiskStore(tmp_path / str(n)))
        rec = recycled_models(recycled)["0"]
        for batch in source.iter(batch_size=16):  # as the trainer's collator hands batches over
            recycled(recycled.tokenize(batch["anchor"]))
        rec.store.flush()
        assert rec.stats.bottom_examples == n and len(rec.store) == n
        return reachable_bytes(rec.pipeline, source)

    small, large = served(64), served(512)
    assert (large - small) / (512 - 64) < 1, f"{small} B held after 64 texts, {large} B after 512"


# ---- at="pooled": one vector per text stored, a head trained on it ------------------------------------------------


def test_pooled_trains_the_head_from_the_store_and_saves_a_plain_model(model, tmp_path):
    import datasets
    from sentence_transformers.sentence_transformer.modules import Normalize

    model.append(Normalize())
    want = model.encode(ANCHORS, convert_to_tensor=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    recycled = recycle_sentence_transformer(model, "pooled")
    rec = recycled_models(recycled)["0"]
    untrained = recycled.encode(ANCHORS, convert_to_tensor=True)
    assert float((untrained - want).abs().max()) <= 1e-5  # the head starts as the identity
    assert rec.stats.bottom_examples == len(ANCHORS)
    args = st.SentenceTransformerTrainingArguments(
        str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=3, learning_rate=1e-1, report_to=[],
        use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    st.SentenceTransformerTrainer(
        model=recycled, args=args, train_dataset=datasets.Dataset.from_dict({"anchor": ANCHORS, "positive": POSITIVES}),
        loss=losses.MultipleNegativesRankingLoss(recycled)).train()
    assert rec.stats.bottom_examples == 10 and len(rec.store) == 10  # each distinct text ran once, in 2 epochs
    trained = recycled.encode(ANCHORS, convert_to_tensor=True)
    assert float((trained - want).abs().max()) > 1e-3  # the head trained
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the original is untouched
    assert float((model.encode(ANCHORS, convert_to_tensor=True) - want).abs().max()) == 0

    recycled.save(str(tmp_path / "saved"))
    loaded = st.SentenceTransformer(str(tmp_path / "saved"), device="cpu")  # no trust_remote_code: plain modules
    assert [type(m).__name__ for m in loaded] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert float((loaded.encode(ANCHORS, convert_to_tensor=True) - trained).abs().max()) <= 1e-5


def test_pooled_plain_pytorch_loader_batches_pooled_states(model):
    recycled = recycle_sentence_transformer(model, "pooled", head=torch.nn.Linear(32, 8))
    rec = recycled_models(recycled)["0"]
    examples = [{**recycled.tokenize([t]), "label": 0} for t in ANCHORS]
    examples = [{k: v[0] for k, v in e.items() if k != "label"} for e in examples]
    batch = next(iter(rec.loader(examples, batch_size=6, progress=False)))
    assert batch["states"].shape == (6, 1, 32)
    out = rec(**batch)
    assert out.shape == (6, 8) and out.requires_grad
    assert float((recycled.encode(ANCHORS, convert_to_tensor=True) - out.detach()).abs().max()) <= 1e-5
    assert rec.stats.bottom_examples == len(ANCHORS)  # encode read every text from the store


def test_pooled_refuses_a_head_it_cannot_save_and_a_model_without_pooling(model):
    with pytest.raises(TypeError, match="pass a SkipConnectionHead"):  # before any training: save could not write it
        recycle_sentence_transformer(model, "pooled", head=torch.nn.Sequential(torch.nn.Linear(32, 32)))
    with pytest.raises(TypeError, match="starts with a Transformer and a Pooling"):
        recycle_sentence_transformer(st.SentenceTransformer(modules=[model[0]], device="cpu"), "pooled")
    with pytest.raises(TypeError, match="head= is for at='pooled'"):
        recycle_sentence_transformer(model, 0.5, head=torch.nn.Identity())
