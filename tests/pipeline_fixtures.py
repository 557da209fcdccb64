"""A tiny, fast experiment on disk: a saved tiny Llama, a small CounterFact-style edit file, a config."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tiny import tiny_model, tiny_tokenizer

SUBJECTS = ["France", "Italy", "Spain", "Germany", "Japan", "China"]
CAPITALS = ["Paris", "Rome", "Madrid", "Berlin", "Tokyo", "Beijing"]


def write_tiny_experiment(root: Path, *, n: int = 4, editor: str = "memit", layers: str = "all") -> dict:
    """Files for one tiny experiment under `root`; returns the raw config dict (also written as config.yaml)."""
    model_dir = root / "model"
    if not model_dir.exists():
        tiny_model("llama").save_pretrained(model_dir)
        tiny_tokenizer(add_bos=True).save_pretrained(model_dir)
    edits = root / "edits.json"
    records = [
        {
            "case_id": i,
            "subject": s,
            "prompt": f"The capital of {s} is",
            "ground_truth": c,
            "target_new": CAPITALS[(i + 1) % len(CAPITALS)],
            "rephrase_prompt": f"{s}'s capital is",
            "locality_prompt": f"The capital of {SUBJECTS[(i + 2) % 6]} is",
            "locality_ground_truth": CAPITALS[(i + 2) % 6],
        }
        for i, (s, c) in enumerate(zip(SUBJECTS, CAPITALS, strict=True))
    ]
    edits.write_text(json.dumps(records))
    raw = {
        "name": "tiny",
        "model": {"source": str(model_dir)},
        "edits": {"dataset": str(edits), "n": n},
        "editor": {
            "name": editor,
            "hparams": {"mom2_n_tokens": 512, "layers": [1, 2], "v_num_grad_steps": 4, "mom2_update_weight": 10.0},
        },
        "finetune": {
            "method": "lora",
            "layers": layers,
            "corpus": "builtin",
            "max_examples": 8,
            "epochs": 1,
            "batch_size": 4,
            "cutoff_len": 64,
        },
        "evaluation": {"control": False, "tasks": [], "activations": True, "activation_prompts": 4, "batch_size": 8},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    return raw
