"""Run configuration: frozen dataclasses for every stage, filled from YAML plus overrides.

``config_loading.load_config`` has OmegaConf validate a YAML file and ``key=value``
overrides against these dataclasses: an unknown key or a value of the wrong type is an
error that names it. ``config_checks.check_config`` adds the range checks a type cannot
express, so a bad run fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Optional

from qstar_jax.search.aggregate import Agg
from qstar_jax.search.mctsr import MCTSrConfig


class ConfigError(ValueError):
    """A configuration names something missing or holds a value out of range."""


class Utility(str, enum.Enum):
    """Where the process reward R_P of a step comes from."""

    zero = "zero"  # g = 0 (MATH in the paper)
    prm = "prm"  # a process reward model (GSM8K in the paper)
    code_rule = "code_rule"  # -0.5 when the code so far fails Python's tokenizer (MBPP)
    countdown_rule = "countdown_rule"  # -1 illegal step or lost game, +1 reaching the target


POLICY_DTYPES = ("float32", "bfloat16")  # what the models compute and cache in
SOLVER = "solver"  # label.stronger_model naming the task's exact solver
# policy.source and q_train.second_opinion naming a model train_policy trains in the run
SCRATCH = "scratch"


class LabelMethod(str, enum.Enum):
    best_of_rollouts = "best_of_rollouts"
    fitted_q_iteration = "fitted_q_iteration"
    stronger_model = "stronger_model"


class QBackbone(str, enum.Enum):
    policy = "policy"  # the frozen policy's own hidden states
    separate = "separate"  # a separate, trainable model


class Loss(str, enum.Enum):
    bce = "bce"
    mse = "mse"


class Scorer(str, enum.Enum):
    """What ranks complete trajectories for best-of-N."""

    f = "f"  # g + λ·h of the final node: the score Q* ranks its complete trajectories by
    q = "q"  # h of the final node: Q̂ of the final step (search.h_agg folds the path's)
    prm = "prm"  # the aggregated process reward g


# Tasks whose policy the train_policy stage can train from scratch (policy.source=scratch).
FROM_SCRATCH_TASKS = ("countdown", "arithmetic")
# Tasks whose exact solver decides whether a partial trace can still succeed, and those
# whose solver also writes the rest of a trace (label.stronger_model=solver).
EXACT_VALUE_TASKS = ("countdown", "arithmetic")
SOLVER_TASKS = ("arithmetic",)
CODE_TASKS = ("mbpp", "mbpp_sanitized", "humaneval")  # search.utility=code_rule
# qstar_no_q: the same A* with λ = 0 (Q̂ ignored), what Q̂ adds. best_of_n_matched:
# best-of-N at the smallest N that spends at least Q*'s generated tokens per problem
# (searched from an estimate on this run's results), the budget-matched baseline.
METHODS = ("greedy", "self_consistency", "best_of_n", "beam", "qstar", "qstar_no_q",
           "best_of_n_matched")
# The methods that sample eval.samples independent chains a problem.
CHAIN_METHODS = ("self_consistency", "best_of_n", "best_of_n_matched")
# The other reasoners on the same engine, run only when eval.methods lists them: Tree of
# Thoughts (breadth and depth first over steps) and MCTS self-refine (whole answers).
REASONER_METHODS = ("tot_bfs", "tot_dfs", "mctsr")
STAGES = ("train_policy", "collect", "label", "train_q", "train_prm", "evaluate")
# train_prm (a learned PRM for search.utility=prm) runs only when stages lists it.
DEFAULT_STAGES = tuple(stage for stage in STAGES if stage != "train_prm")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    # An HF directory, a .gguf file, an alias (smollm2-135m-instruct), or "scratch": the
    # train_policy stage trains a small decoder of our architecture (the synthetic worlds
    # only: FROM_SCRATCH_TASKS, Countdown and arithmetic chains).
    source: str = SCRATCH
    dtype: str = "float32"  # one of POLICY_DTYPES
    # Prompt through the tokenizer's chat template (a checkpoint's: a scratch policy has none).
    chat_template: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyTrainingConfig:
    hidden_size: int = 96
    intermediate_size: int = 256
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    train_problems: int = 5000
    steps: int = 1000
    # 32 rows a step at a peak learning rate of 2e-3: two policies (the policy and the
    # second opinion, q_train.second_opinion=scratch) in the time of one of 64 rows. At
    # 3e-3 32 rows stalled on seed 1 (next-token loss 0.34 after 1000 steps); at 2e-3
    # seeds 0, 1 and 2 reached 0.107, 0.094 and 0.157 unclipped, and seeds 1 and 2
    # 0.082 and 0.062 with the gradient clipped to norm 1: docs/default_experiment.md.
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    # A value head trained jointly on traces with a wrong step (weight of its BCE; 0 = no
    # head): the trunk learns to carry, at a step's end, whether the trace went wrong.
    value_weight: float = 0.0
    value_batch_size: int = 32
    # Clip each step's gradient to this global norm (null: no clipping).
    max_grad_norm: float | None = 1.0
    # Steps between checkpoints of the training (out/policy.training, deleted once the
    # policy is saved; also saved after the last step): a killed run resumes from the last
    # one to the policy a run never killed trains (bit for bit where its steps compute
    # deterministically, as on CPUs).
    checkpoint_every: int = 200


@dataclasses.dataclass(frozen=True, kw_only=True)
class CountdownWorldConfig:
    """Countdown's world (configs/countdown_verifier.yaml): small numbers keep the
    arithmetic learnable by a tiny policy, so what it gets wrong is mostly planning."""

    num_count: int = 4
    number_range: tuple[int, int] = (1, 9)
    target_range: tuple[int, int] = (10, 50)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskConfig:
    # The default experiment's world: arithmetic chains (tasks/arithmetic), whose
    # difficulty lives in task.options.config (ArithmeticConfig's fields).
    name: str = "arithmetic"
    # Passed to the task's constructor (e.g. data_files for offline machines, n_shot); the
    # task rejects keys it does not know.
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    countdown: CountdownWorldConfig = dataclasses.field(default_factory=CountdownWorldConfig)
    eval_split: str = "test"
    eval_problems: int = 500
    train_split: str = "train"
    train_problems: int = 700
    # A dataset record a task cannot read (no '####' answer line, an empty field) is an
    # error naming it; true drops such records and logs how many.
    skip_malformed: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    slots: int = 8192  # 1.5 GB of cache for the default policy (python -m qstar_jax.memory_plan)
    max_len: int = 160
    # The most tokens a step samples. A line that reaches it is cut there and gets a line
    # break written after it (one more token in the cache): the step is an ordinary step
    # and its trace goes on, on a new line, up to max_steps (docs/reasoners.md).
    step_token_cap: int = 40
    max_steps: int = 8  # steps per trajectory before it is cut off (in every search, Q*'s too)
    # Sample a step in chunks of at most this many tokens per row, the rows whose step has
    # ended dropped between chunks, so one long row does not keep the short ones computing
    # (decoding/step_chunks.py); each distinct padded row count then compiles its own step
    # sampler. 0: the whole step in one call, every row computed until the last one ends.
    # 16: SmolLM2 collect on CPU (64 rows, cap 48) took 46 s of step calls against 111 s
    # in one call, 6 compiled variants against 2 (8: about as fast, more calls and
    # variants; 32: 48 s); experiments/profile_decode.py --collect. A trie
    # (eval.prefix_sharing) runs in chunks of as many rounds (decoding/trie_chunks.py):
    # SmolLM2 on CPU, 32 HumanEval prompts x 4 steps at temperature 0.8, 4 tries: 150 s
    # against 185 s in one call (one trie with a 48-token step: 34 s against 65 s); greedy
    # tries of 1 row per problem gain nothing (50 problems: 92 s against 89 s), as a
    # round's cost there is mostly fixed and each smaller row bucket compiles.
    step_chunk: int = 16
    # Pad a sampler call's rows (and a trie round's draws) to a power of two of at least
    # this many: each distinct padded count is a compiled program. 64 suits the small
    # from-scratch policies, whose rows cost little next to a compile: the default's
    # evaluate, from a cold compile cache, 332 s against 430 s at 1 (40 trie programs
    # against 74, the same results). The real-model configs keep 1 but SmolLM2 HumanEval's,
    # which sets 8 (three fewer compiled row counts; its greedy was slower at 16: 128 s
    # against 105 s, experiments/trie_chunk_times.py).
    min_rows: int = 64
    # A paged cache (decoding/paged_cache.py: pages that forks share, so a tree costs its
    # distinct tokens; a trie's branch forks page tables) instead of one max_len row per
    # slot; 0 = rows. On a mesh the pages split over mesh.data with the slots.
    page_size: int = 0
    pages: int = 0  # with page_size > 0: the pool's pages (0: slots x max_len tokens' worth)
    # How the token loops read the layers' weights (decoding/weights.py): "auto" holds a
    # copy split per layer on CPU and GPU, twice the layers' memory for a decode step 1.7x
    # (batch 1) to 2.1x (batch 8) as fast on an H200 (docs/gpu_tpu.md); "per-layer" the
    # copy as loaded;
    # "per-layer-transposed" the same copy with the attention's projections held [out, in]
    # (XLA:GPU then computes a batch-1 projection in one kernel instead of storing its
    # products for a second: experiments/device_program.py; the GPU's auto unless a mesh
    # splits the heads; not yet timed on a GPU); "per-layer-kernels" the transposed copy
    # with the MLP's products as rows too, a layer's norms, products, SiLU and residuals
    # run as four Pallas kernels on a GPU at decode steps of up to 4 rows (qstar_kernels/
    # row_products_gpu.py; untimed there), the jnp path elsewhere (the CPU's auto unless
    # a mesh splits the heads: SmolLM2 decodes 3-10% faster, docs/decoder_speed.md);
    # "stacked" holds them once and scans over them (the TPU's auto); memory_plan counts
    # each.
    layer_weights: str = "auto"
    # "copy": a step call's token loop runs over one copy of its rows' cache windows,
    # taken once a call and its new positions written back, instead of gathering every
    # row's window at every token ("gather"; models/row_windows.py; a per-layer copy, a
    # mesh.model of 1, on pages the jnp attention). "auto": copy on a CPU where it can, on
    # pages only for a call whose windows hold at most a sixteenth of the pool's positions
    # (step_sampler.PAGED_WINDOWS_SHARE: rows share pages, their copies do not); gather
    # elsewhere (untimed on a GPU or TPU). On a CPU SmolLM2's 64-row collect step calls ran
    # 12-14% faster on row slots, 14-25% on pages with copy, and the default run's evaluate
    # stage as fast (158 s against 161), the same results (docs/decoder_speed.md).
    row_windows: str = "auto"

    @property
    def num_pages(self) -> int:
        """The paged cache's pages (0 without paging)."""
        if self.page_size <= 0:
            return 0
        return self.pages or self.slots * -(-self.max_len // self.page_size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CollectConfig:
    rollouts_per_problem: int = 4
    temperature: float = 1.0  # paper: 0.9 for math, 0.2 for code


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelConfig:
    # The default: completion by the arithmetic task's exact solver (stronger_model=solver).
    method: LabelMethod = LabelMethod.stronger_model
    rollouts_per_state: int = 4
    # Discount per step: a label is gamma^(steps to the reward) * reward. Below 1 a deeper
    # node on a winning path scores above its shallower ancestors, so A* dives instead of
    # widening over first steps (Countdown's validation split chose 0.25).
    gamma: float = 0.8
    rounds: int = 3  # fitted Q-iteration
    # Completion by a stronger LLM: a model directory, or "solver" for the task's exact
    # solver (where it has one), which makes each label the state's exact value.
    stronger_model: Optional[str] = "solver"
    # Label only the steps taken from states that can still reach the answer (decided by
    # the task's exact solver): Q̂ is then fitted on the choice A* makes, among a live
    # state's candidate steps, instead of also on states an earlier mistake has doomed,
    # where nothing in the last step tells right from wrong.
    live_states_only: bool = True
    # best_of_rollouts: what each collected trace did after a step counts as one of that
    # step's rollouts_per_state rollouts, so one fewer is drawn (none for 1: the label is
    # the trace's own discounted reward). A trace's continuation is capped by the trace's
    # decode.max_steps; a drawn rollout gets decode.max_steps of its own.
    trace_is_a_rollout: bool = False


class PRMLabels(str, enum.Enum):
    """Math-Shepherd's estimate of a step from M completions sampled after it."""

    hard = "hard"  # good when any completion reaches the right answer
    soft = "soft"  # the share of completions that do


@dataclasses.dataclass(frozen=True, kw_only=True)
class PRMTrainingConfig:
    """Stage train_prm: a head on the policy's hidden states, trained with BCE (and
    q_train's optimiser settings) on per-step labels from label.rollouts_per_state
    completions per step, written to <out>/prm for search.utility=prm."""

    labels: PRMLabels = PRMLabels.hard


@dataclasses.dataclass(frozen=True, kw_only=True)
class QTrainConfig:
    backbone: QBackbone = QBackbone.policy
    separate_model: Optional[str] = None
    trainable_layers: int = -1  # separate backbone: last n layers trainable; -1 = all
    hidden_layers: int = 1  # 0 = a linear head
    # The head on the policy's hidden states also reads each step's log-probability under
    # the policy (its confidence in the step).
    step_logprob: bool = True
    # A second policy whose log-probability of each step the head also reads
    # (experiments/second_opinion.py): a checkpoint trained apart, or "scratch": one that
    # train_policy trains in this run as it trains the policy, from the next seed (its own
    # initialisation, traces and batches), into out/second_policy. None: no second opinion.
    second_opinion: Optional[str] = SCRATCH
    loss: Loss = Loss.bce
    learning_rate: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 30
    holdout_fraction: float = 0.1
    patience: int = 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig:
    k: int = 6  # candidate steps per expansion
    lam: float = 1.0  # f = g + lam * h
    # Stop after this many complete trajectories (paper: 6; its configs keep 6).
    n_complete: int = 1
    expansions_per_node: int = 1  # times A* may expand a node, K new steps each (paper: 1)
    # g = 0 by default: nothing inside the search knows whether an answer is right, so
    # the learned Q̂ plans (Agg is moot then; the paper's configs set min or last).
    agg: Agg = Agg.min
    # How h folds the Q̂ of a path's edges: last, the Q̂ of the edge into the node (the
    # paper's); product, for a Q̂ that is the chance a step from a live state keeps it
    # live (label.gamma=1), the chance every step so far did: a slip early on lowers
    # every node below it, where the last edge's Q̂ cannot see it.
    h_agg: Agg = Agg.last
    utility: Utility = Utility.zero
    prm_model: Optional[str] = None
    # Math-Shepherd's format: a tag after each step, scored by P(good) over {good, bad}.
    prm_step_tag: str = "ки"
    prm_good_token: str = "+"
    prm_bad_token: str = "-"
    temperature: float = 1.0
    max_expansions: int = 64
    max_generated_tokens: int = 100000


class ToTEvaluator(str, enum.Enum):
    """What judges a new state in Tree of Thoughts."""

    q = "q"  # Q̂ of the edge into it: the search's h
    prm = "prm"  # g: the process utility (search.utility) under search.agg
    value_prompt = "value_prompt"  # the policy asked V times: sure / likely / impossible


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToTSettings:
    evaluator: ToTEvaluator = ToTEvaluator.q
    k: int = 5  # steps proposed per state
    keep: int = 5  # b: states kept per depth (tot_bfs)
    threshold: float = 0.5  # tot_dfs: a state valued below this is pruned
    max_expansions: int = 100  # tot_dfs: the step limit
    value_samples: int = 3  # V, for the value prompt
    value_temperature: float = 1.0  # the value prompt's replies are sampled at this


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    methods: tuple[str, ...] = METHODS
    samples: int = 6  # N for self-consistency and best-of-N
    best_of_n_scorer: Scorer = Scorer.f
    beam_width: int = 2
    beam_k: int = 3
    temperature: float = 1.0
    problems_per_batch: int = 100  # problems searched side by side (bounded by decode.slots)
    dump_trees: bool = False
    # Sample each node's children (and best-of-N's chains) as a token trie: the same
    # distribution, each distinct token computed and counted once
    # (decoding/trie_sampler.py). False: every sample is its own row and pays for every
    # token, copies included.
    prefix_sharing: bool = True
    tot: ToTSettings = dataclasses.field(default_factory=ToTSettings)
    mctsr: MCTSrConfig = dataclasses.field(default_factory=MCTSrConfig)
    # Token limit of one whole text the policy writes (MCTSr's answers, critiques and
    # scores; ToT's value verdicts).
    text_max_tokens: int = 256
    # Finished text rows each problem keeps in the cache (policy/kept_rows.py) so that a
    # prompt continuing one (MCTSr's refinement after its critique, a critique after the
    # answer's self-scores) computes only its new tokens; 0 keeps none.
    text_kept_rows: int = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """The device mesh (qstar_jax/parallel.py): ``data`` shards cache slots and batches,
    ``model`` shards heads, MLP and vocabulary; -1 = every device the other axis leaves."""

    data: int = -1
    model: int = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """Multi-process start-up (``parallel.initialize_distributed``): all three of
    coordinator, num_processes and process_id, or none of them. None given:
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, else, when the
    environment shows a multi-process job (a SLURM step of several tasks, a TPU pod slice,
    Open MPI), JAX's own detection; else one process. Launch settings, not the
    experiment's: config.yaml leaves them out."""

    coordinator: Optional[str] = None  # host:port of process 0
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    # None: detect when the environment shows a cluster; true / false: always / never.
    auto_detect: Optional[bool] = None
    # A process silent this long counts as dead: JAX stops every other one, naming it.
    heartbeat_timeout_s: int = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A run's settings, in the order a reader needs them: the seed; the model, task and
    decoder every stage shares; the stages to run, then each stage's own settings in
    stage order; where results go and on which devices."""

    seed: int = 0
    policy: PolicyConfig = dataclasses.field(default_factory=PolicyConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    stages: tuple[str, ...] = DEFAULT_STAGES
    policy_training: PolicyTrainingConfig = dataclasses.field(default_factory=PolicyTrainingConfig)
    collect: CollectConfig = dataclasses.field(default_factory=CollectConfig)
    label: LabelConfig = dataclasses.field(default_factory=LabelConfig)
    q_train: QTrainConfig = dataclasses.field(default_factory=QTrainConfig)
    prm_training: PRMTrainingConfig = dataclasses.field(default_factory=PRMTrainingConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    out_dir: str = "runs/default"
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
