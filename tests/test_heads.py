"""heads.py: decoder classifiers pool the last real token from the mask, on either padding side."""

from __future__ import annotations

import pytest
import torch

import layer_recycling as lr
from conftest import LAYERS, PROBLEMS, decoder_classifier, text_examples
from helpers import padded_batch

LEVELS = [0, 1, LAYERS // 2, LAYERS]


def _left_padded(examples: list[dict], pad_id: int = 0, extra: int = 2) -> dict[str, torch.Tensor]:
    """Left-pad examples as a decoder tokenizer does (``padding_side="left"``)."""
    t = max(len(e["input_ids"]) for e in examples) + extra
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), t), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, t - n :], mask[i, t - n :] = torch.tensor(e["input_ids"]), 1
    return {"input_ids": ids, "attention_mask": mask}


def _per_example(model, examples: list[dict]):
    """(logits (b, num_labels), mean loss) of ``model`` run on each example alone, unpadded."""
    logits, losses = [], []
    with torch.no_grad():
        for e in examples:
            out = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["label"]]))
            logits.append(out.logits[0])
            losses.append(out.loss)
    return torch.stack(logits), torch.stack(losses).mean()


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral", "qwen2"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("at", LEVELS)
def test_decoder_classifier_served_equals_the_model_per_example(family, problem, side, at):
    model = decoder_classifier(family, problem)
    examples = [dict(e, label=PROBLEMS[problem][1](i)) for i, e in enumerate(text_examples(8))]
    rec = lr.recycle(model, at=at).eval()
    rec.fill(examples[::2], progress=False)  # hits and misses in one batch
    batch = (padded_batch if side == "right" else _left_padded)(examples)
    labels = torch.tensor([e["label"] for e in examples])
    with torch.no_grad():
        out = rec(**batch, labels=labels)
    logits, loss = _per_example(model, examples)
    assert rec.stats.hits == 4 and rec.stats.misses == 4
    assert out.logits.shape == logits.shape
    assert float((out.logits - logits).abs().max()) <= 1e-5
    assert abs(float(out.loss) - float(loss)) <= 1e-5


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_decoder_classifier_trains_from_the_store_with_the_models_loss(family, problem):
    model = decoder_classifier(family, problem)
    examples = [dict(e, label=PROBLEMS[problem][1](i)) for i, e in enumerate(text_examples(6))]
    rec = lr.recycle(model, at=2).eval()
    batch = next(iter(rec.loader(examples, batch_size=6, progress=False)))
    with torch.no_grad():
        out = rec(**batch)
    logits, loss = _per_example(model, examples)
    assert float((out.logits - logits).abs().max()) <= 1e-5 and abs(float(out.loss) - float(loss)) <= 1e-5
    assert model.config.problem_type == problem  # inferred from the labels, as transformers does
