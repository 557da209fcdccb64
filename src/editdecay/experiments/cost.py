"""What a grid will cost before it runs (`editdecay grid --dry-run --cost`): time and memory per stage and device.

Each stage's work is counted in floating-point operations from its configuration, with N the model's parameters:
a forward pass costs 2N per token, a training pass (forward and backward) 6N per token:
- edit:        2N x mom2_n_tokens (statistic) + 6N x n_edits x v_num_grad_steps x (context_template_count + 1)
               x (context_template_tokens + PROMPT_TOKENS) (target optimisation);
- fine-tune:   6N x examples x epochs x min(cutoff_len, EXAMPLE_TOKENS);
- evaluate:    2N x (edit and control prompts x SCORED_TOKENS + downstream items x tokens per item), per group;
- activations: 2N x probe prompts x PROMPT_TOKENS x 4 groups.
A device kind's rate for each stage is measured: `record_rates` divides the work of a finished run's stages by
their seconds (`bench/record_throughputs.py` stores it in presets/throughputs.json), so an estimate for the run
it was measured on gives back that run's times, and other models and sizes scale by their work. Kinds without a
measurement carry an assumed rate and are printed as such. Memory is a formula per stage (weights, the
fine-tuning's copy and optimizer state, activations): an order of magnitude, not a measurement.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from editdecay.config import ExperimentConfig
from editdecay.data import load_corpus, load_edit_requests
from editdecay.editing.registry import EDITORS
from editdecay.evaluation import GROUPS
from editdecay.evaluation.generation_success import GENERATION_EXTRA_TOKENS
from editdecay.experiments.resolve import model_spec, resolve_experiment, stage_keys, written_keys
from editdecay.experiments.store import ArtifactStore
from editdecay.finetuning import FinetuneSpec
from editdecay.models import DtypeResolver, ModelShape, read_model_shape

T = TypeVar("T")
THROUGHPUTS = Path(__file__).resolve().parents[1] / "presets" / "throughputs.json"
STAGE_KINDS = ("edit", "fine-tune", "evaluate", "activations")
STORE_KINDS = {"edit": "patches", "fine-tune": "finetunes", "evaluate": "evals", "activations": "activations"}
PROMPT_TOKENS = 16  # an edit prompt with its subject, in tokens (CounterFact and zsRE average 10-20)
SCORED_TOKENS = 2 * (PROMPT_TOKENS + 3) + GENERATION_EXTRA_TOKENS  # both targets scored, then a short generation
EXAMPLE_TOKENS = 128  # an instruction example when the corpus cannot be read here (Commonsense-170K: ~100)
DOWNSTREAM_PROMPT_TOKENS = 120
GENERATE_NEW_TOKENS = 32  # answer tokens per beam in generate mode
LOGLIK_OPTION_TOKENS = 8
# Parameters of the study's models, for hub ids whose config is not in the local cache.
PUBLISHED_PARAMETERS = {
    "openai-community/gpt2-xl": 1.56e9,
    "gpt2-xl": 1.56e9,
    "EleutherAI/gpt-j-6b": 6.05e9,
    "meta-llama/Llama-2-7b-hf": 6.74e9,
    "meta-llama/Llama-3.1-8B": 8.03e9,
}
# Test-set sizes of the LLM-Adapters commonsense tasks, for a task directory that is not here.
TASK_SIZES = {
    "boolq": 3270,
    "piqa": 1838,
    "social_i_qa": 1954,
    "hellaswag": 10042,
    "winogrande": 1267,
    "ARC-Easy": 2376,
    "ARC-Challenge": 1172,
    "openbookqa": 500,
}
CORPUS_SIZES = {"commonsense_170k": 170_420}  # by file stem, for a corpus that is not here


def parameter_count(shape: ModelShape) -> float:
    """Attention (4 h^2, an upper bound under grouped-query attention), a gated MLP (3 h w) per block, and the
    embedding (v h): within ~10% of the published counts for the models here."""
    h, w = shape.hidden_size, shape.intermediate_size
    return shape.num_layers * (4 * h * h + 3 * h * w) + shape.vocab_size * h


@dataclass(frozen=True)
class StageWork:
    kind: str  # one of STAGE_KINDS
    key: str  # the artifact's store key: a stage shared by configurations is counted once
    flops: float
    memory_bytes: float


@dataclass
class Assumptions:
    """What the estimate had to assume, each said once in the output, and what it read of the data files, keyed by
    everything the reading depends on (a grid's configurations share datasets: each is read once)."""

    notes: set[str] = field(default_factory=set)
    readings: dict[tuple, Any] = field(default_factory=dict)

    def once(self, key: tuple, read: Callable[[], T]) -> T:
        if key not in self.readings:
            self.readings[key] = read()
        return self.readings[key]


@dataclass(frozen=True)
class DeviceRates:
    kind: str
    flops_per_s: dict[str, float]  # per stage kind
    measured: bool
    source: str

    def seconds(self, work: StageWork) -> float:
        return work.flops / self.flops_per_s[work.kind]


def load_rates(path: Path = THROUGHPUTS) -> list[DeviceRates]:
    data = json.loads(path.read_text())
    rates = [
        DeviceRates(kind, dict(entry["flops_per_s"]), bool(entry["measured"]), entry["source"])
        for kind, entry in data["kinds"].items()
    ]
    for entry in rates:
        if missing := sorted(set(STAGE_KINDS) - set(entry.flops_per_s)):
            raise ValueError(f"{path}: device kind {entry.kind!r} has no rate for {missing}.")
    return rates


def _edit_prompts(config: ExperimentConfig, assumptions: Assumptions) -> float:
    """Prompts scored per edit request (rewrite, paraphrases, neighborhood), read from the dataset when it is here."""
    edits = config.edits
    return assumptions.once(
        ("edit prompts", edits.dataset, min(edits.n, 50), edits.seed), lambda: _read_edit_prompts(config, assumptions)
    )


def _read_edit_prompts(config: ExperimentConfig, assumptions: Assumptions) -> float:
    try:
        sample = load_edit_requests(config.edits.dataset, min(config.edits.n, 50), seed=config.edits.seed)
    except (OSError, ValueError):
        zsre = "zsre" in config.edits.dataset.lower()
        assumptions.notes.add(
            f"{config.edits.dataset} is not readable here: {3 if zsre else 13} prompts per edit assumed "
            f"({'zsRE' if zsre else 'CounterFact'}'s)"
        )
        return 3.0 if zsre else 13.0
    return sum(1 + len(r.paraphrase_prompts) + len(r.neighborhood) for r in sample) / len(sample)


def _examples(config: ExperimentConfig, spec: FinetuneSpec, assumptions: Assumptions) -> tuple[float, float]:
    """(examples per epoch, tokens per example) of the fine-tuning corpus."""
    key = ("corpus", config.finetune.corpus, config.finetune.max_examples, spec.cutoff_len)
    return assumptions.once(key, lambda: _read_examples(config, spec, assumptions))


def _read_examples(config: ExperimentConfig, spec: FinetuneSpec, assumptions: Assumptions) -> tuple[float, float]:
    ft = config.finetune
    try:
        corpus = load_corpus(ft.corpus)
    except (OSError, ValueError):
        stem = Path(ft.corpus).stem
        if stem not in CORPUS_SIZES and ft.max_examples is None:
            raise ValueError(
                f"The fine-tuning corpus {ft.corpus} is not readable here and its size is not known: set "
                "finetune.max_examples to estimate."
            ) from None
        size = ft.max_examples or CORPUS_SIZES[stem]
        assumptions.notes.add(f"{ft.corpus} is not readable here: {size:,} examples of {EXAMPLE_TOKENS} tokens")
        return float(size), float(min(spec.cutoff_len, EXAMPLE_TOKENS))
    characters = sum(len(e.instruction) + len(e.input) + len(e.output) for e in corpus[:1000]) / min(len(corpus), 1000)
    tokens = min(spec.cutoff_len, characters / 4 + 20)  # ~4 characters per token, plus the prompt template
    return float(min(len(corpus), ft.max_examples or len(corpus))), tokens


def _downstream_items(config: ExperimentConfig, assumptions: Assumptions) -> float:
    evaluation = config.evaluation
    key = ("tasks", tuple(evaluation.tasks), evaluation.task_limit, evaluation.task_data_dir)
    return assumptions.once(key, lambda: _read_downstream_items(config, assumptions))


def _read_downstream_items(config: ExperimentConfig, assumptions: Assumptions) -> float:
    evaluation = config.evaluation
    if evaluation.task_limit is not None:
        return float(len(evaluation.tasks) * evaluation.task_limit)
    total = 0.0
    for task in evaluation.tasks:
        file = Path(evaluation.task_data_dir or "") / task / "test.json"
        if file.is_file():
            total += len(json.loads(file.read_text()))
        else:
            total += TASK_SIZES.get(task, 1000)
            assumptions.notes.add(f"task test sets not under {evaluation.task_data_dir}: the LLM-Adapters sizes")
    return total


def config_work(
    config: ExperimentConfig,
    keys: dict[str, str],
    parameters: float,
    editor_hparams: dict[str, Any],
    spec: FinetuneSpec,
    dtype_bytes: int,
    hidden: int,
    layers: int,
    assumptions: Assumptions,
) -> list[StageWork]:
    """The stages of one configuration with their work and memory (see the module docstring)."""
    n = config.edits.n
    weights = parameters * dtype_bytes
    statistic = 2 * parameters * editor_hparams.get("mom2_n_tokens", 20_000)
    targets = (
        6
        * parameters
        * n
        * editor_hparams.get("v_num_grad_steps", 25)
        * (editor_hparams.get("context_template_count", 5) + 1)
        * (editor_hparams.get("context_template_tokens", 10) + PROMPT_TOKENS)
    )
    stages = [StageWork("edit", keys["patch"], statistic + targets, 2 * weights)]

    examples, example_tokens = _examples(config, spec, assumptions)
    tokens = examples * spec.epochs * example_tokens
    per_row = hidden * layers * (8 if spec.gradient_checkpointing else 80)  # bytes of activations per token
    rows = spec.batch_size * min(spec.cutoff_len, example_tokens * 2)
    trained = 16 * parameters if spec.method == "full" else 4 * parameters  # float32 copy (+ grads and Adam)
    ft_memory = weights + trained + rows * per_row
    stages.append(StageWork("fine-tune", keys["ft_base"], 6 * parameters * tokens, ft_memory))
    stages.append(StageWork("fine-tune", keys["ft_edited"], 6 * parameters * tokens, ft_memory))

    evaluation = config.evaluation
    prompts = n * _edit_prompts(config, assumptions) + (3 * (evaluation.control_n or 50) if evaluation.control else 0)
    per_item = DOWNSTREAM_PROMPT_TOKENS + (
        evaluation.num_beams * GENERATE_NEW_TOKENS if evaluation.task_mode == "generate" else 4 * LOGLIK_OPTION_TOKENS
    )
    scoring = 2 * parameters * (prompts * SCORED_TOKENS + _downstream_items(config, assumptions) * per_item)
    stages += [StageWork("evaluate", keys[f"eval_{group}"], scoring, 2 * weights) for group in GROUPS]
    if evaluation.activations:
        probes = min(evaluation.activation_prompts, prompts) * 2  # edit and downstream probes
        flops = 2 * parameters * probes * PROMPT_TOKENS * len(GROUPS)
        stages.append(StageWork("activations", keys["activations"], flops, 2 * weights))
    return stages


@dataclass
class GridCost:
    """The stages to run (shared ones once) and what was assumed."""

    stages: list[StageWork]
    assumptions: Assumptions

    def totals(self, rates: DeviceRates) -> dict[str, tuple[int, float, float]]:
        """Per stage kind: (stages to run, seconds, the largest memory of one stage in bytes)."""
        out: dict[str, tuple[int, float, float]] = {}
        for kind in STAGE_KINDS:
            chosen = [s for s in self.stages if s.kind == kind]
            seconds = sum(rates.seconds(s) for s in chosen)
            out[kind] = (len(chosen), seconds, max((s.memory_bytes for s in chosen), default=0.0))
        return out

    def lines(self, all_rates: Iterable[DeviceRates]) -> list[str]:
        out = []
        for rates in all_rates:
            totals = self.totals(rates)
            hours = sum(seconds for _, seconds, _ in totals.values()) / 3600
            label = "measured" if rates.measured else "ASSUMED, not measured"
            out.append(f"{rates.kind} ({label}: {rates.source}): about {hours:,.1f} device-hours")
            for kind, (count, seconds, memory) in totals.items():
                if count:
                    out.append(
                        f"  {kind:12s} {count:5d} x  {seconds / 3600:10,.2f} h in all   "
                        f"peak memory per stage ~{memory / 2**30:,.1f} GiB"
                    )
        out += [f"assumed: {note}" for note in sorted(self.assumptions.notes)]
        return out


def grid_cost(
    configs: list[ExperimentConfig], store: ArtifactStore | None = None, dtypes: DtypeResolver | None = None
) -> GridCost:
    """The work of every stage the grid still has to run (a stage done in `store` costs nothing)."""
    dtypes = dtypes or DtypeResolver()
    assumptions = Assumptions()
    shapes: dict[Any, ModelShape | None] = {}
    chosen: dict[str, StageWork] = {}
    for config in configs:
        spec = model_spec(config)
        if spec not in shapes:
            shapes[spec] = read_model_shape(spec)
        shape = shapes[spec]
        if shape is not None:
            resolved = resolve_experiment(config, shape, dtypes)
            keys, hparams, ft_spec = stage_keys(resolved), resolved.editor_hparams, resolved.finetune_spec
            parameters, hidden, layers = parameter_count(shape), shape.hidden_size, shape.num_layers
        else:
            if config.model.source not in PUBLISHED_PARAMETERS:
                raise ValueError(
                    f"The config of {config.model.source} is not in the local cache and its size is not known "
                    "here: download it once (or its config.json) to estimate its cost."
                )
            keys = written_keys(config)
            defaults = EDITORS[config.editor.name].hparams_class()
            hparams = {**vars(defaults), **config.editor.hparams}
            ft_spec = FinetuneSpec.from_dict(_written_spec(config))
            parameters = PUBLISHED_PARAMETERS[config.model.source]
            hidden, layers = 4096, 32
            assumptions.notes.add("models not in the local cache: published sizes, 32 blocks of width 4096")
        dtype_bytes = 2 if config.model.dtype in ("bfloat16", "float16") else 4
        for work in config_work(config, keys, parameters, hparams, ft_spec, dtype_bytes, hidden, layers, assumptions):
            if store is not None and shape is not None and store.is_done(STORE_KINDS[work.kind], work.key):
                continue
            chosen.setdefault(f"{work.kind}/{work.key}", work)
    return GridCost(list(chosen.values()), assumptions)


def _written_spec(config: ExperimentConfig) -> dict[str, Any]:
    ft = config.finetune.model_dump(mode="json")
    names = {f.name for f in fields(FinetuneSpec)}
    spec = {k: v for k, v in ft.items() if k in names and v is not None}
    spec["compute_dtype"] = "bfloat16"
    return spec


def record_rates(run_dir: Path) -> dict[str, float]:
    """Measured FLOP/s per stage kind of a finished run: its stages' work (as `grid_cost` counts it) over their
    seconds (summary.json `stage_seconds`; only the stages the run executed)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    config = ExperimentConfig.model_validate(summary["config"])
    cost = grid_cost([config])
    seconds = summary["stage_seconds"]
    names = {"edit": ["edit"], "fine-tune": ["finetune M", "finetune Med"], "activations": ["activations"]}
    names["evaluate"] = [f"evaluate {group}" for group in GROUPS]
    rates = {}
    for kind in STAGE_KINDS:
        ran = [name for name in names[kind] if name in seconds]
        if not ran:
            continue
        work = sum(s.flops for s in cost.stages if s.kind == kind)
        if len(ran) != len(names[kind]):
            raise ValueError(f"{run_dir} reused some {kind} stages ({ran} ran): rerun it on a fresh store.")
        rates[kind] = work / sum(seconds[name] for name in ran)
    return rates
