"""Task heads that transformers writes against ``input_ids``, restated for a top that receives states.

The architecture table names which head classes need one (``Arch.heads``); ``split`` wraps the top with it.
"""

from __future__ import annotations

import torch
from torch import nn


class LastTokenClassifier(nn.Module):
    """A decoder's sequence classifier (GPT-2, Llama, Mistral, Qwen2) fed states: pools the last real token.

    transformers finds the last token that is not ``pad_token_id`` in ``input_ids``, which the top never receives.
    Inside the library every batch is right-padded, so the last real token of row i is ``mask[i].sum() - 1``
    (the whole row when there is no mask). The loss is transformers' own ``ForSequenceClassificationLoss``,
    which infers ``config.problem_type`` (regression, single- or multi-label) as the un-recycled model does.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.base = model.base_model  # the top half of the base model: blocks above the split, final norm
        self.score = model.score  # (h) -> (num_labels), applied to every token, as transformers does
        self.config = model.config

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        """(states (b, t, h), mask (b, t), labels (b,) or (b, num_labels)) -> logits (b, num_labels), loss."""
        from transformers.loss.loss_utils import ForSequenceClassificationLoss
        from transformers.modeling_outputs import SequenceClassifierOutputWithPast

        out = self.base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False, **kwargs)
        logits = self.score(out.last_hidden_state)  # (b, t, num_labels)
        b, t = logits.shape[:2]
        rows = torch.arange(b, device=logits.device)
        if attention_mask is None:
            last = torch.full((b,), t - 1, device=logits.device)
        else:
            last = (attention_mask.to(logits.device).long().sum(dim=1) - 1).clamp(min=0)
        pooled = logits[rows, last]  # (b, num_labels)
        loss = None if labels is None else ForSequenceClassificationLoss(labels, pooled, self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled, hidden_states=out.hidden_states, attentions=out.attentions
        )
