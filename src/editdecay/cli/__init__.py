"""The command line: one module per stage, each registering its commands on the shared `app`."""

from editdecay.cli import durability as _durability  # noqa: F401  (registers commands)
from editdecay.cli import editing as _editing  # noqa: F401  (registers commands)
from editdecay.cli import evaluation as _evaluation  # noqa: F401  (registers commands)
from editdecay.cli import finetuning as _finetuning  # noqa: F401  (registers commands)
from editdecay.cli import models as _models  # noqa: F401  (registers commands)
from editdecay.cli import pipeline as _pipeline  # noqa: F401
from editdecay.cli.app import app

__all__ = ["app"]
