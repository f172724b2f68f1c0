"""The Recycled module: train/eval modes, and the contract of an nn.Module and a transformers model.

A parent module, DDP and Lightning save and restore it through torch's own state_dict; ``rec.config`` is the
model's config; ``torch.compile`` serves; positional arguments are routed or refused, never dropped.
"""

from __future__ import annotations

import datetime

import pytest
import torch

import layer_recycling as lr
from conftest import LABELS, cnn_model, decoder_classifier, text_examples
from helpers import assert_same_weights, bert_classifier, labelled_examples, max_diff, padded_batch, train_top


def _dropout_modes(module: torch.nn.Module) -> set[bool]:
    return {m.training for m in module.modules() if isinstance(m, torch.nn.Dropout)}


def test_the_top_trains_in_train_mode_from_construction_on(bert):
    assert not bert.training  # from_pretrained and the fixture give eval mode
    rec = lr.recycle(bert, at=2)
    assert rec.training and _dropout_modes(rec.top) == {True} and _dropout_modes(rec.bottom) == {False}
    batch = next(iter(rec.loader(text_examples(), batch_size=6, progress=False)))
    with torch.no_grad():
        assert len({float(rec(**batch).loss) for _ in range(3)}) > 1  # dropout is on in the top
        rec.eval()
        assert _dropout_modes(rec.top) == {False}
        assert len({float(rec(**batch).loss) for _ in range(3)}) == 1
    rec.train()
    assert _dropout_modes(rec.top) == {True} and _dropout_modes(rec.bottom) == {False}
    assert not bert.training  # the user's model keeps its own mode


# ---- the nn.Module and Hugging Face contract: parents, DDP, Lightning, compile, positional calls ----------------


def test_a_parent_module_holds_every_weight_and_a_fresh_parent_restores_the_trained_top(tmp_path):
    rec = lr.recycle(bert_classifier(), at=2)
    parent = torch.nn.ModuleDict({"rec": rec})
    own = rec.state_dict()
    assert set(parent.state_dict()) == {f"rec.{k}" for k in own}  # torch's own prefixes, every key
    held = {id(t) for t in rec.state_dict(keep_vars=True).values()}
    assert held >= {id(p) for p in rec.parameters()}  # every parameter, top and bottom
    train_top(rec)
    torch.save(parent.state_dict(), tmp_path / "parent.pt")
    fresh = torch.nn.ModuleDict({"rec": lr.recycle(bert_classifier(), at=2)})
    assert not torch.equal(fresh["rec"].top.model.classifier.weight, rec.top.model.classifier.weight)
    fresh.load_state_dict(torch.load(tmp_path / "parent.pt"))
    assert_same_weights(fresh, parent)
    batch = padded_batch(text_examples(4))
    with torch.no_grad():
        assert torch.equal(fresh["rec"].eval()(**batch).logits, rec.eval()(**batch).logits)


def test_a_ddp_checkpoint_restores_the_top(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1,
                                         timeout=datetime.timedelta(seconds=60))
    try:
        rec = lr.recycle(bert_classifier(), at=2, store=lr.DiskStore(tmp_path / "store"))
        ddp = torch.nn.parallel.DistributedDataParallel(rec)
        opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.5)
        for batch in rec.loader(labelled_examples(), batch_size=4, progress=False):
            ddp(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
        torch.save(ddp.state_dict(), tmp_path / "ddp.pt")
        fresh = torch.nn.parallel.DistributedDataParallel(
            lr.recycle(bert_classifier(), at=2, store=lr.DiskStore(tmp_path / "store")))
        assert not torch.equal(fresh.module.top.model.classifier.weight, rec.top.model.classifier.weight)
        fresh.load_state_dict(torch.load(tmp_path / "ddp.pt"))
        assert_same_weights(fresh.module.top, rec.top)
        del ddp, fresh
    finally:
        torch.distributed.destroy_process_group()


def test_a_lightning_module_holding_rec_saves_and_resumes_a_checkpoint(tmp_path):
    L = pytest.importorskip("lightning")

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.rec = lr.recycle(bert_classifier(), at=2, store=lr.DiskStore(tmp_path / "store"))

        def training_step(self, batch, _):
            return self.rec(**batch).loss

        def configure_optimizers(self):
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.5)

    def trainer():
        return L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)

    first = Module()
    loader = first.rec.loader(labelled_examples(), batch_size=4, progress=False)
    run = trainer()
    run.fit(first, loader)
    run.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    assert {k for k in saved if k.startswith("rec.top.")} and set(saved) == set(first.state_dict())
    second = Module()
    trainer().fit(second, loader, ckpt_path=tmp_path / "last.ckpt")  # resumes at step 2 of 2: restores only
    assert_same_weights(second, first)


def test_rec_config_is_the_models_config_and_the_recycling_options_have_their_own_name():
    model = bert_classifier()
    rec = lr.recycle(model, at=2, store_misses=False)
    assert rec.config is model.config and rec.config.model_type == "bert"
    assert rec.recycle_config.at == 2 and rec.recycle_config.store_misses is False
    assert lr.recycle(torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(4)]), at=2).config is None


def test_the_model_reads_the_split_and_the_store_from_its_pipeline_held_once():
    rec = lr.recycle(bert_classifier(), at=2)
    pipe = rec.pipeline
    assert rec.split is pipe.split and rec.bottom is pipe.bottom is pipe.split.bottom and rec.top is pipe.split.top
    assert (rec.at, rec.level, rec.arch, rec.store, rec.stats) == (2, 0.5, pipe.arch, pipe.store, pipe.stats)
    assert rec.recycle_config is pipe.options and rec.source is pipe.source
    with pytest.raises(AttributeError, match=r"rec.at is fixed when the model is recycled: call lr.recycle"):
        rec.at = 3
    assert rec.at == 2 and "at" not in vars(rec)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_a_compiled_model_serves_misses_and_hits_equal_to_eager(backend):
    model = bert_classifier().eval()
    rec = lr.recycle(model, at=2).eval()
    compiled = torch.compile(rec, backend=backend)
    examples = text_examples(9, lengths=(6,))  # one shape for every call: the top compiles once
    first, later = padded_batch(examples[:6]), padded_batch(examples[3:])
    with torch.no_grad():
        compiled(**first)  # 6 misses
        mixed = compiled(**later)  # 3 hits, 3 misses
        hits = compiled(**later)  # 6 hits
        want = model(**later)
    assert rec.stats.misses == 9 and rec.stats.hits == 9
    assert max_diff(want, mixed, later["attention_mask"]) <= 1e-5
    assert max_diff(want, hits, later["attention_mask"]) <= 1e-5


def test_positional_arguments_mean_what_they_mean_to_the_model():
    model = bert_classifier().eval()
    rec = lr.recycle(model, at=2).eval()
    batch = padded_batch(text_examples(4))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        assert max_diff(model(ids, mask), rec(ids, mask), mask) <= 1e-5  # the mask is used, not dropped
        assert max_diff(model(ids, attention_mask=mask), rec(ids, attention_mask=mask), mask) <= 1e-5
    with pytest.raises(TypeError, match=r"multiple values for \['attention_mask'\]"):
        rec(ids, mask, attention_mask=mask)
    with pytest.raises(TypeError, match="inputs_embeds"):
        rec(ids, mask, None, None, torch.zeros(4, 3, 32))  # a positional argument the split cannot route
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():  # labels, the sixth positional argument, reach the top's loss
        assert torch.allclose(rec(ids, mask, None, None, None, labels).loss, model(ids, mask, labels=labels).loss,
                              atol=1e-6)


class MaskedMLP(torch.nn.Module):
    """A plain module whose forward takes a mask: the generic split runs stem and blocks on ``x`` alone."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Linear(4, 8)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(4))
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x, mask=None):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h if mask is None else h * mask)


def test_an_argument_the_generic_split_cannot_route_is_refused_not_dropped():
    torch.manual_seed(0)
    model = MaskedMLP().eval()
    rec = lr.recycle(model, at=2).eval()
    x, mask = torch.randn(3, 4), torch.zeros(3, 1)
    with torch.no_grad():
        assert torch.allclose(rec(x), model(x), atol=1e-6)
    for call in (lambda: rec(x, mask), lambda: rec(x, mask=mask)):
        with pytest.raises(TypeError, match=r"unexpected model inputs \['mask'\].*would be dropped"):
            call()
    with pytest.raises(TypeError, match="refuses 3 positional arguments"):
        rec(x, mask, mask)


def test_examples_without_the_main_input_name_it():
    rec = lr.recycle(bert_classifier(), at=2)
    for call in (rec.predict, rec.fill):
        with pytest.raises(ValueError, match=r"no 'input_ids', the model's main input \(it has \['attention_mask'"):
            call([{"attention_mask": [1, 1, 1], "label": 1}], progress=False)


def test_a_tensor_shared_by_the_halves_is_saved_once_and_loads_back_under_every_name(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    rec = lr.recycle(decoder_classifier("gpt2", "single_label_classification"), at=2)
    names = dict(rec.named_parameters(remove_duplicate=False))
    assert names["top.model.base.wte.weight"] is names["bottom.base.wte.weight"]  # the top keeps the stem
    parent = torch.nn.ModuleDict({"rec": rec})
    state = parent.state_dict()
    assert "rec.bottom.base.wte.weight" in state and "rec.top.model.base.wte.weight" not in state
    with torch.no_grad():
        rec.top.model.score.weight.add_(1.0)  # "trained"
    safetensors.save_file(parent.state_dict(), tmp_path / "parent.safetensors")  # refuses shared tensors
    fresh = torch.nn.ModuleDict({"rec": lr.recycle(decoder_classifier("gpt2", "single_label_classification"), at=2)})
    fresh.load_state_dict(safetensors.load_file(tmp_path / "parent.safetensors"))  # strict: every name loads
    assert_same_weights(fresh, parent)
    assert fresh["rec"].top.model.base.wte.weight is fresh["rec"].bottom.base.wte.weight  # still one tensor


def test_training_lowers_the_loss_without_running_the_bottom(bert):
    examples = text_examples(24)
    rec = lr.recycle(bert, at=2).eval()
    loader = rec.loader(examples, batch_size=8, shuffle=True, progress=False)
    calls = rec.stats.bottom_calls
    trainable = [p for p in rec.parameters() if p.requires_grad]
    assert {id(p) for p in trainable}.isdisjoint({id(p) for p in rec.bottom.parameters()})
    opt = torch.optim.AdamW(trainable, lr=3e-3)
    rec.train()
    assert not any(m.training for m in rec.bottom.modules())  # the bottom stays in eval mode
    losses = []
    for _ in range(8):
        for batch in loader:
            loss = rec(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.7
    assert rec.stats.bottom_calls == calls
    assert all(p.grad is None for p in rec.bottom.parameters())


def test_a_trainable_bottom_is_refused(bert):
    rec = lr.recycle(bert, at=2).eval()
    loader = rec.loader(text_examples(), batch_size=3, progress=False)
    bert.bert.encoder.layer[0].output.dense.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="trainable parameters.*layer.0"):
        rec(**next(iter(loader)))


def test_generic_model_without_loss_says_how_to_train():
    rec = lr.recycle(cnn_model(), at=2).eval()
    batch = next(iter(rec.loader([(torch.randn(3, 8, 8), 1) for _ in range(4)], batch_size=4, progress=False)))
    assert batch["states"].shape == (4, 8, 8, 8) and batch["labels"].tolist() == [1] * 4
    with pytest.raises(TypeError, match="computes no loss"):
        rec(**batch)
    assert rec(states=batch["states"]).shape == (4, LABELS)
