"""PEFT: a PEFT model recycles (adapters above the cut train, below it freeze), and merges to an equal model."""

from __future__ import annotations

import pytest
import torch

import layer_recycling as lr
from conftest import cnn_model, text_examples, text_model

peft = pytest.importorskip("peft")


def _train(rec, examples, steps=20):
    opt = torch.optim.AdamW([p for p in rec.parameters() if p.requires_grad], lr=1e-2)
    loader = rec.loader(examples, batch_size=6, shuffle=True, seed=0, progress=False)
    rec.train()
    for _, batch in zip(range(steps), (b for _ in range(steps) for b in loader)):
        rec(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return rec.eval()


def test_a_peft_model_recycles_trains_its_top_adapters_and_merges_to_an_equal_model():
    model = text_model("bert", "ForSequenceClassification")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False)
    peft_model = peft.get_peft_model(model, config)
    with pytest.warns(UserWarning, match="LoRA adapter weights sit in the recycled bottom.*layer.0"):
        rec = lr.recycle(peft_model, at=2)
    trainable = [n for n, p in rec.named_parameters() if p.requires_grad]
    assert len(trainable) == 8 and all(n.startswith("top.") and "lora_" in n for n in trainable)  # 2 blocks x q, v x A, B
    assert not any(p.requires_grad for p in rec.bottom.parameters())
    examples = text_examples(12)
    before = {n: p.detach().clone() for n, p in rec.named_parameters() if p.requires_grad}
    _train(rec, examples)
    assert any(not torch.equal(before[n], p) for n, p in rec.named_parameters() if n in before)
    batch = {"input_ids": torch.tensor([examples[0]["input_ids"]])}
    with torch.no_grad():
        served = rec(**batch).logits
        merged = peft_model.merge_and_unload().eval()(**batch).logits
    assert float((served - merged).abs().max()) <= 1e-5


def test_add_lora_trains_only_adapters_and_the_head(bert):
    from layer_recycling.integrations.peft import add_lora

    rec = add_lora(lr.recycle(bert, at=2), r=4)
    trainable = [n for n, p in rec.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert not any(p.requires_grad for p in rec.bottom.parameters())
    with pytest.raises(ValueError, match="model type None.*pass target_modules"):
        add_lora(lr.recycle(cnn_model(), at=2))


def test_save_pretrained_after_add_lora_writes_a_folder_the_plain_class_loads_as_the_tuned_model(tmp_path):
    """The adapters are written merged into their layers' weights, in the plain layers' names: ``from_pretrained``
    of the model's class gives the recycled model's outputs (it once re-initialised the adapted layers), and the
    loaded model recycles again on the same store. Checkpoints keep the adapters apart and load back into rec."""
    import transformers as T
    from layer_recycling.integrations.peft import add_lora
    from safetensors.torch import load_file

    model = text_model("bert", "ForSequenceClassification")
    store = lr.DiskStore(tmp_path / "store")
    rec = _train(add_lora(lr.recycle(model, at=2, store=store), r=4), text_examples(12), steps=5)
    rec.save_pretrained(tmp_path / "saved")
    names = load_file(tmp_path / "saved" / "model.safetensors").keys()
    assert not [n for n in names if "lora_" in n or "base_layer" in n]
    loaded = T.BertForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    batch = {"input_ids": torch.tensor([text_examples(1)[0]["input_ids"]])}
    with torch.no_grad():
        assert float((loaded(**batch).logits - rec(**batch).logits).abs().max()) <= 1e-5
    store.close()
    again = lr.recycle(loaded, at=2, store=lr.DiskStore(tmp_path / "store"))  # the same bottom: no mismatch
    assert len(again.store) == 12
    whole = lr.model_state_dict(rec)
    assert any("lora_A" in n for n in whole)  # a checkpoint keeps the adapters, to resume training them
