"""Speech encoders over raw audio (``speech.py``): each clip stored as its own frames, a padded batch served as each
clip alone, training from the store, examples keyed by their unpadded samples, and what is refused."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as T

import layer_recycling as lr
from layer_recycling import speech
from families import _SPEECH, alone, build, examples, padded, worst

TOL = 1e-5


def _frames(model, n: int) -> int:
    return int(model._get_feat_extract_output_lengths(torch.tensor(n)))  # transformers' own count


def test_the_store_holds_each_clips_frames_and_a_padded_batch_gives_each_clip_alone():
    model = build("wav2vec2", "ForCTC")
    rows = examples("wav2vec2", n=4)  # 400, 250, 330 and 250 samples: the two of 250 run their stem together
    batch = padded(rows, "right")
    rec = lr.recycle(model, at=2).eval()
    with torch.no_grad():
        missed, hit, plain = rec(**batch), rec(**batch), model(**batch)
    want = alone(model, rows)
    assert worst(want, batch, missed) <= TOL and worst(want, batch, hit) <= TOL
    counts = [_frames(model, len(r["input_values"])) for r in rows]
    assert [s.shape[0] for s in rec.store.get_many([rec.encode(r)[0] for r in rows])] == counts == [39, 24, 32, 24]
    assert missed.logits.shape == plain.logits.shape  # the caller's layout: the frames of the padded width
    # the model itself on the padded batch is not each clip alone: its feature encoder's group norm sees the padding
    assert worst(want, batch, plain) > 1e-3


def test_a_clip_is_keyed_by_its_samples_however_it_comes():
    model = build("wav2vec2", "Model")
    rec = lr.recycle(model, at=1)
    clip = examples("wav2vec2", n=1)[0]["input_values"]
    mask = torch.cat([torch.ones(400), torch.zeros(50)]).long()
    padded_clip = {"input_values": torch.cat([clip, torch.zeros(50)]), "attention_mask": mask}  # max_length padding
    forms = [{"input_values": clip}, {"input_values": clip[None]}, padded_clip,
             {k: v[None] for k, v in padded_clip.items()}]  # return_tensors="pt": a batch of one
    assert len({rec.encode(f)[0] for f in forms}) == 1
    assert rec.encode({"input_values": padded_clip["input_values"]})[0] != rec.encode(forms[0])[0]  # no mask: all real


def test_training_from_the_store_gives_the_loss_of_each_clip_alone():
    model = build("wav2vec2", "ForSequenceClassification")
    rows = [{**r, "labels": i % 3} for i, r in enumerate(examples("wav2vec2", n=4))]
    rec = lr.recycle(model, at=2)
    loader = rec.loader(rows, batch_size=4, progress=False)
    calls = rec.stats.bottom_calls
    batch = next(iter(loader))
    assert batch["attention_mask"].sum(1).tolist() == [39, 24, 32, 24]  # frames, not samples
    with torch.no_grad():
        want = torch.stack([model(input_values=r["input_values"][None], labels=torch.tensor([r["labels"]])).loss
                            for r in rows]).mean()
    rec.eval()
    with torch.no_grad():
        assert abs(float(rec(**batch).loss - want)) <= TOL
    rec.train()
    top = [p for p in rec.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in top]
    rec(**batch).loss.backward()
    torch.optim.SGD(top, lr=0.1).step()
    assert any(not torch.equal(a, p) for a, p in zip(before, top)) and rec.stats.bottom_calls == calls


def test_a_ctc_loss_over_a_padded_batch_is_the_mean_of_each_clips_loss():
    """CTC counts each clip's frames from the frames' mask (transformers' own length function made the identity)."""
    model = build("wavlm", "ForCTC")
    rows = examples("wavlm", n=3)
    g = torch.Generator().manual_seed(0)
    targets = [torch.randint(1, 11, (n,), generator=g) for n in (4, 2, 3)]
    labels = torch.full((3, 4), -100)
    for i, t in enumerate(targets):
        labels[i, : len(t)] = t
    with torch.no_grad():
        assert model.config.ctc_loss_reduction == "mean"  # over the clips of a batch
        want = sum(model(input_values=r["input_values"][None], labels=t[None]).loss for r, t in zip(rows, targets)) / 3
        for store in (lr.MemoryStore(), None):  # served from the store, and with the bottom on every batch
            rec = lr.recycle(model, at=3, store=store).eval()
            assert abs(float(rec(**padded(rows, "right"), labels=labels).loss - want)) <= TOL * float(want)
            batch = next(iter(rec.loader([{**r, "labels": t} for r, t in zip(rows, targets)], batch_size=3,
                                         progress=False)))  # targets of their own lengths, padded with -100
            assert torch.equal(batch["labels"], labels) and abs(float(rec(**batch).loss - want)) <= TOL * float(want)


def test_the_recycled_model_gives_no_extract_features():
    """The base models' normed feature-encoder output is not stored (it would add conv_dim[-1] values a frame)."""
    model = build("data2vec_audio", "Model")
    rows = examples("data2vec_audio", n=2)
    with torch.no_grad():
        out = lr.recycle(model, at=1).eval()(**padded(rows, "right"))
    assert out.extract_features is None and type(out) is type(model(**padded(rows, "right")))


def test_a_clip_too_short_for_one_frame_is_refused():
    model = build("wav2vec2", "Model")
    rec = lr.recycle(model, at=1)
    assert speech.receptive_field(model) == 20 and _frames(model, 20) == 1
    with pytest.raises(ValueError, match=r"clip 1 has 19 samples, fewer than the 20 the feature encoder needs"):
        rec(**padded([{"input_values": torch.randn(30)}, {"input_values": torch.randn(19)}], "right"))


def test_the_self_check_compares_each_clip_alone():
    model = build("hubert", "ForSequenceClassification")
    rec = lr.recycle(model, at=2, example=examples("hubert", n=2))
    assert rec.split_check.report.startswith("clip 0 alone: compared logits (1, 3)") and "clip 1 alone" in \
        rec.split_check.report


@pytest.mark.parametrize("make, refusal", [
    (lambda: T.Wav2Vec2Model(T.Wav2Vec2Config(**_SPEECH, add_adapter=True)), r"add_adapter=True is refused"),
    (lambda: T.Wav2Vec2ForSequenceClassification(T.Wav2Vec2Config(**_SPEECH, use_weighted_layer_sum=True)),
     r"use_weighted_layer_sum=True reads every block's states"),
    (lambda: T.Wav2Vec2ForPreTraining(T.Wav2Vec2Config(**_SPEECH)), r"Wav2Vec2ForPreTraining is refused: of this "
                                                                     r"family's models only those ending in Model"),
])
def test_what_no_split_serves_is_refused_with_the_reason(make, refusal):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make()
    with pytest.raises(ValueError, match=refusal):
        lr.recycle(model, at=1)
