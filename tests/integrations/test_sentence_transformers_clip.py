"""sentence-transformers CLIP: texts and images each keyed by content on their tower's store; encode, the usual
loss (MultipleNegativesRankingLoss on (image, text) pairs) and saving as with the plain model. Built offline from a
tiny random transformers CLIPModel and a tiny BPE tokenizer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers as T

import layer_recycling as lr

st = pytest.importorskip("sentence_transformers", reason="the st extra: pip install 'layer-recycling[st]'")
from PIL import Image  # noqa: E402
from sentence_transformers import losses  # noqa: E402
from sentence_transformers.sentence_transformer.modules import CLIPModel  # noqa: E402

from layer_recycling.integrations.sentence_transformers import (  # noqa: E402
    recycle_sentence_transformer,
    recycled_models,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

WORDS = ["a", "photo", "of", "cat", "dog", "red", "car", "the", "house", "big"]
TEXTS = ["a photo of a cat", "a red car", "the big house of a dog", "a photo of a cat"]  # the last repeats the first


def _images() -> list[Image.Image]:
    pixels = [np.random.RandomState(i).randint(0, 255, (20, 20, 3), dtype=np.uint8) for i in range(3)]
    return [Image.fromarray(p) for p in pixels] + [Image.fromarray(pixels[0])]  # the last repeats the first


def _tokenizer() -> T.CLIPTokenizer:
    """CLIP's byte-pair tokenizer over ``WORDS``: each word's merges, left to right, end to its last letter."""
    vocab, merges = {"<|startoftext|>": 0, "<|endoftext|>": 1}, []
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        for p in parts:
            vocab.setdefault(p, len(vocab))
        joined = parts[0]
        for p in parts[1:]:
            merges += [(joined, p)] if (joined, p) not in merges else []
            joined += p
            vocab.setdefault(joined, len(vocab))
    tok = T.CLIPTokenizer(vocab=vocab, merges=merges)
    assert tok("a red car")["input_ids"] == [0, vocab["a</w>"], vocab["red</w>"], vocab["car</w>"], 1]
    return tok


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A saved tiny CLIPModel with its processor. The tokenizer pads with the end-of-text id, as OpenAI's does."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    tok = _tokenizer()
    images = T.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    T.CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=16,
                  patch_size=4)
    torch.manual_seed(0)
    T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    return folder


def _model(folder) -> st.SentenceTransformer:
    return st.SentenceTransformer(modules=[CLIPModel(str(folder))], device="cpu")


def _encode(model) -> torch.Tensor:
    # sentence-transformers 6 encodes one modality per batch: texts, then images
    return torch.cat([model.encode(TEXTS, convert_to_tensor=True), model.encode(_images(), convert_to_tensor=True)])


def test_encode_equals_the_plain_model_each_text_and_image_keyed_by_content(clip_dir):
    model = _model(clip_dir)
    want = _encode(model)
    recycled = recycle_sentence_transformer(model, 0.5)
    rec = recycled_models(recycled)["0"]
    assert type(rec).__name__ == "RecycledDual"
    first, second = _encode(recycled), _encode(recycled)
    assert float((first - want).abs().max()) <= 1e-5 and float((second - want).abs().max()) <= 1e-5
    for name, stats in rec.stats.items():  # 3 distinct texts and 3 distinct images, each through its bottom once
        assert stats.bottom_examples == 3 and len(rec.store[name]) == 3, name
    assert type(model[0].model).__name__ == "CLIPModel"  # the user's model is not changed


def test_mnrl_on_image_text_pairs_trains_from_the_stores_as_the_plain_model(clip_dir, tmp_path):
    """Steps of MultipleNegativesRankingLoss on (image, text): the recycled copy and the plain model with the
    same blocks frozen give the same loss at each step; the bottoms ran once per distinct image and text. The
    trained copy saves as a plain SentenceTransformer."""
    model = _model(clip_dir)
    plain, recycled = copy.deepcopy(model), recycle_sentence_transformer(model, 0.5)
    rec = recycled_models(recycled)["0"]
    frozen = {n for n, p in rec.source.named_parameters() if not p.requires_grad}
    for name, p in plain[0].model.named_parameters():
        p.requires_grad_(name not in frozen)
    got = []
    for m in (recycled, plain):
        m.train()
        loss, features = losses.MultipleNegativesRankingLoss(m), [m.preprocess(_images()[:3]), m.preprocess(TEXTS[:3])]
        opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(2):
            opt.zero_grad()
            value = loss(features, None)
            value.backward()
            opt.step()
            got.append(float(value.detach()))
    assert all(abs(a - b) <= 1e-5 for a, b in zip(got[:2], got[2:])), got
    assert {n: s.bottom_calls for n, s in rec.stats.items()} == {"text": 1, "image": 1}
    recycled.save(str(tmp_path / "saved"))
    loaded = st.SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert type(loaded[0].model).__name__ == "CLIPModel"
    assert float((_encode(loaded) - _encode(plain)).abs().max()) <= 1e-5  # trained as the plain model was


@pytest.mark.slow
def test_the_trainer_trains_it_and_it_saves_as_a_plain_sentence_transformer(clip_dir, tmp_path):
    import datasets

    recycled = recycle_sentence_transformer(_model(clip_dir), 0.5)
    rec = recycled_models(recycled)["0"]
    before = _encode(recycled)
    args = st.SentenceTransformerTrainingArguments(
        str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=3, learning_rate=1e-2, report_to=[],
        use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    pairs = datasets.Dataset.from_dict({"anchor": _images()[:3], "positive": TEXTS[:3]})
    st.SentenceTransformerTrainer(model=recycled, args=args, train_dataset=pairs,
                                  loss=losses.MultipleNegativesRankingLoss(recycled)).train()
    assert {n: s.bottom_examples for n, s in rec.stats.items()} == {"text": 3, "image": 3}  # epoch 2: all hits
    trained = _encode(recycled)
    assert float((trained - before).abs().max()) > 1e-3
    recycled.save(str(tmp_path / "saved"))
    loaded = st.SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert type(loaded[0].model).__name__ == "CLIPModel"
    assert float((_encode(loaded) - trained).abs().max()) <= 1e-5


def test_its_stores_are_passed_by_tower_and_a_single_store_is_refused(clip_dir):
    model = _model(clip_dir)
    stores = {"text": lr.MemoryStore(), "image": lr.MemoryStore()}
    recycled = recycle_sentence_transformer(model, 0.5, store=stores)
    _encode(recycled)
    assert len(stores["text"]) == 3 and len(stores["image"]) == 3
    with pytest.raises(ValueError, match=r"one store \(MemoryStore\) given for a dual model's two towers"):
        recycle_sentence_transformer(model, 0.5, store=lr.MemoryStore())
