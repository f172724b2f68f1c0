"""HF ``Trainer`` with a recycled model: batches from the store, checkpoints that are the whole model.

The stock ``transformers.Trainer`` trains, evaluates and predicts a recycled model with default arguments on
``rec.dataset(examples)`` (columns ``states`` and labels; pass its ``collate`` as ``data_collator``). It saves a
model it does not know as a bare state dict; ``RecycledTrainer`` saves every checkpoint as a standard model
directory instead (``from_pretrained`` loads it; ``recycling_config.json`` beside it), resumes from one, and
groups by length from the stored lengths.
"""

from __future__ import annotations

import os

import torch
import transformers
from transformers.trainer_pt_utils import LengthGroupedSampler

TRAINING_ARGS = "training_args.bin"  # what Trainer itself writes beside a checkpoint


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
