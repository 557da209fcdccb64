"""Tiny randomly initialised models and a small byte-level BPE tokenizer, built offline in well under a second."""

from __future__ import annotations

from functools import cache

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from tokenizers import decoders as tk_decoders
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)
from transformers.models.gemma3 import Gemma3TextConfig

ARCHES = ("gpt2", "gptj", "gpt_neox", "llama", "gemma3")

_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.",
    "Danielle Darrieux speaks French. The mother tongue of Thomas Joannes Stieltjes is Dutch.",
    "Michael Jordan plays basketball. Lionel Messi plays soccer. Roger Federer plays tennis.",
    "Toyota is headquartered in Tokyo. Apple is based in Cupertino. The Eiffel Tower is in Paris.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction: Answer the question. ### Response: the correct answer is true false option1 option2",
    "Question: Which is heavier? answer1 answer2 answer3 answer4 answer5 solution1 solution2 ending1 ending2",
    "English German Japanese Chinese Berlin London Beijing Toronto piano guitar violin physicist actor",
]


@cache
def _trained_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer)
    return tokenizer


def tiny_tokenizer(add_bos: bool = False, padding_side: str = "right") -> PreTrainedTokenizerFast:
    """Byte-level BPE (leading-space tokens like GPT-2); `add_bos` prepends <s> like Llama/Gemma."""
    raw = Tokenizer.from_str(_trained_tokenizer().to_str())
    if add_bos:
        raw.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", raw.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side=padding_side
    )


def tiny_config(arch: str, vocab_size: int = 400):
    common = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=128, **common)
    if arch == "gptj":
        return GPTJConfig(n_embd=32, n_layer=4, n_head=4, n_positions=128, rotary_dim=4, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
            **common,
        )
    if arch == "llama":
        return LlamaConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            tie_word_embeddings=True,
            **common,
        )
    if arch == "gemma3":
        return Gemma3TextConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=64,
            max_position_embeddings=128,
            sliding_window=16,
            **common,
        )
    raise ValueError(f"unknown tiny arch {arch!r}; choose from {ARCHES}")


def tiny_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised causal LM in eval mode, reproducible from `seed`."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=dtype)
    model.eval()
    return model


def bos_for(arch: str) -> bool:
    """Whether the real family prepends BOS (Llama, Gemma) or not (GPT-2, GPT-J, NeoX)."""
    return arch in ("llama", "gemma3")
