"""Context templates for target optimisation and keys (docs/algorithms.md §1.1): "{}" plus sampled prefixes.

The reference samples prefixes without a seed; we sample with a fixed seed and store the templates in
every patch manifest, so a run can be reproduced and audited.
"""

from __future__ import annotations

import torch
from torch import nn

from editdecay.models import causal_lm

SEED_WORDS = ("The", "Therefore", "Because", "I", "You")


def sample_context_templates(
    model: nn.Module, tokenizer, *, count: int = 5, length: int = 10, seed: int = 0
) -> list[str]:
    """["{}"] + `count` prefixes of `length` tokens sampled (top-k 5) from the model, each ending ". {}".

    Prefixes start from the seed words in turn ("The", "Therefore", ...).
    """
    device = next(model.parameters()).device
    templates = ["{}"]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for index in range(count):
            torch.manual_seed(seed * 1000 + index)
            word = SEED_WORDS[index % len(SEED_WORDS)]
            inputs = tokenizer(word, return_tensors="pt").to(device)
            new_tokens = max(1, length - int(inputs["input_ids"].shape[1]))
            try:
                output = causal_lm(model).generate(
                    **inputs,
                    do_sample=True,
                    top_k=5,
                    top_p=1.0,
                    temperature=1.0,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    pad_token_id=tokenizer.pad_token_id
                    if tokenizer.pad_token_id is not None
                    else tokenizer.eos_token_id,
                )
            except RuntimeError as err:
                if "probability tensor" not in str(err):
                    raise
                raise ValueError(
                    "The model produces NaN/inf logits (while sampling context templates); check "
                    "its weights and dtype (use float32)."
                ) from err
            text = tokenizer.decode(output[0], skip_special_tokens=True)
            # Braces would be read as format fields; newlines would split the context from the prompt.
            text = text.replace("{", " ").replace("}", " ").replace("\n", " ").strip()
            templates.append(text + ". {}")
    return templates
