"""Trained MEND networks on disk, keyed by everything they depend on: the base model's fingerprint, the training
records' digest, the training hyperparameters and MEND_FORMAT. Training in progress keeps its checkpoint beside the
final directory (`<key>.partial/`), so an interrupted training resumes; workers coordinate through a file lock."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from editdecay.editing.mend.hparams import MendHyperParams
from editdecay.editing.mend.network import MendNetwork
from editdecay.editing.mend.training import TrainedMend, TrainingRecords, train_network, training_records
from editdecay.locking import locked_compute
from editdecay.storage import atomic_directory

log = logging.getLogger(__name__)

# Bump when the network, its training or what is saved changes: older networks are then trained again.
MEND_FORMAT = "mend/1"
_META, _WEIGHTS = "mend.json", "network.safetensors"


class MendStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def key(self, fingerprint: str, hp: MendHyperParams, records_digest: str) -> str:
        payload = json.dumps([MEND_FORMAT, fingerprint, records_digest, hp.training_identity()], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def directory(self, fingerprint: str, key: str) -> Path:
        return self.root / fingerprint[:16] / key

    def get(
        self,
        model: nn.Module,
        tokenizer,
        hp: MendHyperParams,
        fingerprint: str,
        *,
        records: TrainingRecords | None = None,
        progress: bool = True,
    ) -> TrainedMend:
        """The trained network for this model and these settings: loaded when stored, else trained (resuming any
        checkpoint) and stored. `records`: `training_records(hp)` when the caller has them already."""
        records = records or training_records(hp)
        key = self.key(fingerprint, hp, records.digest)
        final = self.directory(fingerprint, key)
        checkpoint = final.with_name(f"{key}.partial") / "checkpoint.pt"

        def compute() -> TrainedMend:
            log.info(
                "training MEND for %s (%d records, %d steps)", fingerprint[:12], len(records.train), hp.train_steps
            )
            return train_network(model, tokenizer, hp, records, checkpoint, progress=progress)

        def save(trained: TrainedMend) -> None:
            save_network(trained, final, key)
            if checkpoint.is_file():
                checkpoint.unlink()
                checkpoint.parent.rmdir()

        trained = locked_compute(final, lambda: load_network(final, key), compute, save)
        trained.meta["key"] = key
        return trained


def save_network(trained: TrainedMend, directory: Path, key: str) -> None:
    with atomic_directory(directory) as staging:
        tensors = {name: t.detach().cpu().contiguous() for name, t in trained.network.state_dict().items()}
        save_file(tensors, str(staging / _WEIGHTS))
        meta = {**trained.meta, "key": key, "format": MEND_FORMAT}
        (staging / _META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_network(directory: Path, key: str) -> TrainedMend | None:
    """The stored network, or None when there is none for this key and format."""
    if not (directory / _META).is_file():
        return None
    meta = json.loads((directory / _META).read_text(encoding="utf-8"))
    if meta.get("format") != MEND_FORMAT or meta.get("key") != key:
        return None
    network = MendNetwork(
        int(meta["m"]), int(meta["d"]), len(meta["layers"]), int(meta["hidden"]), float(meta["edit_lr"])
    )
    network.load_state_dict(load_file(str(directory / _WEIGHTS)))
    network.eval()
    return TrainedMend(network, meta)
