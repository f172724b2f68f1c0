"""HF ``Trainer`` with a recycled model: batches from the store, checkpoints that are the whole model.

The stock ``transformers.Trainer`` trains, evaluates and predicts a recycled model with default arguments on
``rec.dataset(examples)`` (columns ``states`` and labels; pass its ``collate`` as ``data_collator``). It saves a
model it does not know as a bare state dict; ``RecycledTrainer`` saves every checkpoint as a standard model
directory instead (``from_pretrained`` loads it; ``recycling_config.json`` beside it), resumes from one, and
groups by length from the stored lengths.
"""

from __future__ import annotations

import json
import os

import safetensors.torch
import torch
import transformers
from transformers.trainer_pt_utils import LengthGroupedSampler

from ..saving import load_model_state_dict

TRAINING_ARGS = "training_args.bin"  # what Trainer itself writes beside a checkpoint
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"  # what save_pretrained writes


class RecycledTrainer(transformers.Trainer):
    """``transformers.Trainer`` for ``lr.recycle(...)`` models; the same arguments."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # Our checkpoints are the whole model in its own names: load them as such, strictly (Trainer's own loader
        # would load them non-strictly into the recycled module's bottom./top. names, restoring nothing).
        load_model_state_dict(self.accelerator.unwrap_model(model or self.model), read_weights(resume_from_checkpoint))

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = getattr(dataset, "lengths", None)
        if self.args.train_sampling_strategy == "group_by_length" and lengths is not None:
            # Trainer would read every item's "input_ids" to measure it; the store knows each length already.
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=lengths)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        lengths = getattr(eval_dataset, "lengths", None)
        if self.args.train_sampling_strategy == "group_by_length" and lengths is not None:
            # As for training: Trainer groups eval batches too, and would read every item to measure it.
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return LengthGroupedSampler(self.args.eval_batch_size, lengths=lengths,
                                        generator=torch.Generator().manual_seed(seed))
        return super()._get_eval_sampler(eval_dataset)


def read_weights(folder: str) -> dict[str, torch.Tensor]:
    """The state dict ``save_pretrained`` wrote in ``folder`` (one safetensors file, or shards and their index)."""
    index = os.path.join(folder, INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, WEIGHTS)):
        files = [WEIGHTS]
    else:
        raise FileNotFoundError(f"no {WEIGHTS} or {INDEX} in {folder}: not a checkpoint RecycledTrainer saved")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(safetensors.torch.load_file(os.path.join(folder, name), device="cpu"))
    return state
