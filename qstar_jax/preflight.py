"""What ``run`` checks of a config before any work, so that a mistake a later stage would
meet hours in is one line now: the task builds from its options; every checkpoint the
config names exists and would load, read without its weights (its config, its tensors'
names and shapes, its tokenizer, and a chat template where the policy prompts through
one); every data file exists and is of a format the loader reads, and the files give the
split evaluate reads; a synthetic world has the splits the run reads; the policy can read
the English that MCTSr and ToT's value prompt ask it in; a Math-Shepherd PRM's tokenizer
reads each of its labels as one token; and, once the mesh is built,
``decode.layer_weights`` can hold each decoding model on it. And what it warns of: the
train and eval splits reading the same file, temperature 0 where several samples are
asked for, and a warmup as long as the policy's training.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from qstar_jax.architectures import architecture, evaluate_models, policy_architecture
from qstar_jax.config import (CHAIN_METHODS, FROM_SCRATCH_TASKS, SCRATCH, SOLVER, ConfigError,
                              ToTEvaluator, Utility)
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.decoding.step_sampler import ROW_WINDOWS, resolve_row_windows
from qstar_jax.decoding.weights import COPYING_LAYER_WEIGHTS, resolve_layer_weights
from qstar_jax.models.config import UnsupportedConfigError
from qstar_jax.models.loading import (PACKAGED_MODELS, check_checkpoint, checkpoint_tokenizer,
                                      missing_tokenizer, source_path)
from qstar_jax.models.weights import CheckpointError
from qstar_jax.parallel import MODEL, ShardingRules
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.prm import prm_kind, prm_label_ids
from qstar_jax.tasks.datasets import (DataFilesError, builder_for, expanded_paths,
                                     files_for_split)
from qstar_jax.tasks.hashed_splits import check_split as check_hashed_split


def preflight(config) -> None:
    """Raise ConfigError for the first of the checks above that fails."""
    ctx = RunContext(config=config, out=Path(config.out_dir))
    ctx.task  # noqa: B018 (built to check)
    check_world_splits(config)
    check_checkpoints(config)
    check_data_files(config)
    check_task_splits(ctx)
    check_prompt_style(ctx)
    check_reasoner_prompts(config)
    check_prm_labels(config)


def check_prompt_style(ctx: RunContext) -> None:
    """A model's own prompt (``task.options.prompt_style``) goes through the chat template
    or not as its authors sent it: said here, where building the first prompt would say it
    after the policy has loaded."""
    style = getattr(ctx.task, "prompt_style", None)
    for prompt in getattr(ctx.task, "model_prompts", ()):
        if prompt.name == style:
            try:
                prompt.check_chat(ctx.config.policy.chat_template)
            except ValueError as error:
                raise ConfigError(f"task.options.prompt_style: {error}") from None


def check_world_splits(config) -> None:
    """A synthetic world's splits are known without any data: the two the run reads exist
    (evaluate would meet an unknown eval split after every training stage)."""
    if config.task.name in FROM_SCRATCH_TASKS:
        for key in ("train_split", "eval_split"):
            try:
                check_hashed_split(getattr(config.task, key), config.task.name)
            except ValueError as error:
                raise ConfigError(f"task.{key}: {error}") from None


def check_checkpoints(config) -> None:
    """Every checkpoint the config names exists and would load (``check_checkpoint``, no
    weight read), whichever stages this invocation runs: the same run's next invocation
    may run the stage that loads it."""
    named = {"policy.source": config.policy.source if config.policy.source != SCRATCH else None,
             "search.prm_model": config.search.prm_model,
             "label.stronger_model": (None if config.label.stronger_model == SOLVER
                                      else config.label.stronger_model),
             "q_train.separate_model": config.q_train.separate_model,
             "q_train.second_opinion": (None if config.q_train.second_opinion == SCRATCH
                                        else config.q_train.second_opinion)}
    if config.search.utility != Utility.prm:
        named["search.prm_model"] = None
    for key, source in named.items():
        if source is not None and source not in PACKAGED_MODELS and not Path(source).exists():
            raise ConfigError(f"{key}: checkpoint {source} does not exist; give an HF "
                              f"directory, a .gguf file or one of {sorted(PACKAGED_MODELS)}")
    # Neither a learned PRM nor a checkpoint: an error. A learned one is no checkpoint.
    if named["search.prm_model"] is not None and prm_kind(named["search.prm_model"]) == "learned":
        named["search.prm_model"] = None
    for key, source in named.items():
        if source is None:
            continue
        try:
            model = check_checkpoint(source, chat_template=(key == "policy.source"
                                                            and config.policy.chat_template))
        except (CheckpointError, UnsupportedConfigError) as error:
            raise ConfigError(f"{key}: {error}") from error
        layers = config.q_train.trainable_layers
        if key == "q_train.separate_model" and layers > model.num_layers:
            raise ConfigError(f"q_train.trainable_layers={layers}: {source} has "
                              f"{model.num_layers} layers; give at most that, or -1 for all")


def check_data_files(config) -> None:
    """Every data file exists and is of a format the loader reads; a mapping of splits
    gives the split evaluate reads; HumanEval's ``problems_file`` is a file."""
    options = config.task.options
    problems_file = options.get("problems_file")  # HumanEval's one file
    if problems_file is not None and not Path(str(problems_file)).expanduser().is_file():
        raise ConfigError(f"task.options.problems_file: {problems_file} is not a file")
    data_files = options.get("data_files")
    if data_files is not None and not data_files:
        raise ConfigError("task.options.data_files is empty: name the files, or leave it out "
                          "to load the task's dataset from the hub")
    data_files = data_files or {}
    files = data_files.values() if isinstance(data_files, dict) else [data_files]
    for file in files:
        try:
            paths = expanded_paths(file)
            for path in paths:
                if not glob.glob(path):
                    raise ConfigError(f"task.options.data_files: {path} does not exist")
            builder_for(paths)  # a format the loader reads
        except DataFilesError as error:
            raise ConfigError(f"task.options.data_files: {error}") from error
    # evaluate reads its split last, maybe hours in: that the files give it is checked now
    if data_files and isinstance(data_files, dict) and "evaluate" in config.stages:
        try:
            files_for_split(data_files, config.task.eval_split)
        except DataFilesError as error:
            raise ConfigError(f"task.options.data_files: {error} (task.eval_split)") from error


def check_task_splits(ctx: RunContext) -> None:
    """The splits collect and evaluate read exist and hold the problems they ask for (a
    packaged or generated split refuses a count it does not hold), loaded as those stages
    load them (``RunContext.problems``), where that needs no hub: a dataset the hub
    serves is read when a stage first needs it."""
    task = ctx.task
    if getattr(task, "hub_name", None) and getattr(task, "data_files", None) is None:
        return
    t, stages = ctx.config.task, ctx.config.stages
    reads = [("train_split", t.train_split, t.train_problems, "collect" in stages),
             ("eval_split", t.eval_split, t.eval_problems, "evaluate" in stages)]
    for key, split, count, read in reads:
        if read:
            try:
                ctx.problems(split, count)
            except ValueError as error:
                raise ConfigError(f"task.{key}={split!r}: {error}") from error


def check_reasoner_prompts(config) -> None:
    """MCTSr's critiques and self-scores and ToT's value prompt are questions in English; a
    policy trained from scratch reads only its task's characters (the others are <unk>)."""
    if config.policy.source != SCRATCH or "evaluate" not in config.stages:
        return
    methods = config.eval.methods
    cannot_read = ("which a policy trained from scratch (policy.source=scratch) cannot read: "
                   "it knows only the task's characters")
    if "mctsr" in methods:
        raise ConfigError(f"eval.methods: mctsr asks the policy in English to critique, refine "
                          f"and score its answers, {cannot_read}; drop mctsr or give a "
                          "pretrained chat model as policy.source")
    if ({"tot_bfs", "tot_dfs"} & set(methods)
            and config.eval.tot.evaluator == ToTEvaluator.value_prompt):
        raise ConfigError(f"eval.tot.evaluator: value_prompt asks the policy in English whether "
                          f"a state can still succeed, {cannot_read}; use q, or give a "
                          "pretrained chat model as policy.source")


def check_prm_labels(config) -> None:
    """A Math-Shepherd PRM's tokenizer exists and reads each of its labels as one token
    (read without the PRM's weights; evaluate loads the PRM after every training stage)."""
    s = config.search
    if (s.utility != Utility.prm or s.prm_model is None or "evaluate" not in config.stages
            or prm_kind(s.prm_model) != "shepherd"):
        return
    try:
        tokenizer = checkpoint_tokenizer(source_path(s.prm_model),
                                         architecture(s.prm_model, "search.prm_model", ""))
        if tokenizer is None:
            raise missing_tokenizer(s.prm_model)
    except CheckpointError as error:
        raise ConfigError(f"search.prm_model: {error}") from error
    prm_label_ids(tokenizer.encode, s)


def first_expansion_slots(config, method: str) -> int:
    """The cache slots a search of ``method`` holds at its first expansion at the least: its
    root's and its first children's, as a node's slot is freed only after its children
    are forked (best_of_n_matched's N is found as it runs: its floor is a chain's)."""
    e = config.eval
    if method in ("best_of_n", "self_consistency"):
        return e.samples + 1
    if method == "beam":
        return e.beam_k + 1
    if method in ("qstar", "qstar_no_q"):
        return config.search.k + 1
    if method in ("tot_bfs", "tot_dfs"):
        return e.tot.k + 1
    return 2  # greedy, best_of_n_matched, MCTSr: a prompt and one sample


def check_searches_fit_a_shard(config, data_shards: int) -> None:
    """Each evaluate method's search fits one data shard's share of decode.slots (a
    search's rows all sit on one shard): said before the training stages run, where
    evaluate would stop on it after them."""
    if "evaluate" not in config.stages:
        return
    share = config.decode.slots // data_shards
    for method in config.eval.methods:
        need = first_expansion_slots(config, method)
        if need > share:
            split = (f" gives each of the {data_shards} data shards {share}, and a search's "
                     f"rows all sit on one shard" if data_shards > 1 else "")
            raise ConfigError(
                f"decode.slots={config.decode.slots}{split}: a {method} search holds {need} "
                f"slots at its first expansion (its root and {need - 1} children) and more "
                f"as its tree grows; raise decode.slots above {need * data_shards - 1} "
                "(python -m qstar_jax.memory_plan sizes the cache for a device)")


def check_layer_weights(config, mesh) -> None:
    """``decode.layer_weights`` can hold each model that decodes (the policy, a second
    opinion) on ``mesh``, and their step calls can run over row windows where
    ``decode.row_windows`` asks: said before any weight loads rather than when a stage
    first builds a decoder."""
    d = config.decode
    decoded = [policy_architecture(config)]
    decoded += [m for name, m in evaluate_models(config).items() if name == "second_opinion"]
    for model in decoded:
        paged_kernel = d.page_size > 0 and Paging(
            page_size=d.page_size, num_pages=d.num_pages).for_heads(model.head_dim).uses_kernel()
        heads_split = ShardingRules().for_model(model, mesh).splits("heads", mesh)
        try:
            mode = resolve_layer_weights(d.layer_weights, heads_split=heads_split)
        except ValueError as error:
            raise ConfigError(f"decode.{error} (mesh.model={mesh.shape[MODEL]} splits the "
                              f"{model.num_heads} heads)") from None
        if ROW_WINDOWS[d.row_windows]:  # "auto" falls back to gathering
            try:
                resolve_row_windows(True, split_model=mesh.shape[MODEL] > 1,
                                    per_layer=mode in COPYING_LAYER_WEIGHTS,
                                    paged_kernel=paged_kernel)
            except ValueError as error:
                raise ConfigError(f"decode.row_windows=copy: {error} (mesh.model="
                                  f"{mesh.shape[MODEL]}, decode.layer_weights={mode}, "
                                  f"decode.page_size={d.page_size})") from None


def shared_split_warning(config) -> str | None:
    """A line saying that the train and eval splits are one split, or their data files
    share a file, where the run evaluates: Q-hat and the PRM would learn on problems they
    are judged on. None else."""
    data_files, task = config.task.options.get("data_files"), config.task
    if "evaluate" not in config.stages:
        return None
    if task.train_split == task.eval_split:
        return (f"warning: task.train_split and task.eval_split are both "
                f"{task.eval_split!r}: the stages that learn (collect, label, train_q) read "
                "the problems evaluate scores; give evaluate a split of its own")
    if not data_files:
        return None

    def files(split: str) -> set[str]:
        try:
            globs = files_for_split(data_files, split)
        except DataFilesError:  # a split with no files: the stage that reads it says so
            return set()
        return {os.path.realpath(f) for pattern in globs for f in glob.glob(pattern)}

    shared = sorted(files(task.train_split) & files(task.eval_split))
    if not shared:
        return None
    return (f"warning: task.options.data_files gives the {task.train_split!r} and "
            f"{task.eval_split!r} splits the same file(s) {shared}: the stages that learn "
            f"(collect, label, train_q) read the problems evaluate scores; give each split "
            f"its own files (task.options.data_files.{task.train_split}=... and "
            f".{task.eval_split}=...)")


def identical_samples_warning(config) -> str | None:
    """A line naming each setting that samples several copies of one thing at temperature
    0, where every copy is the greedy one: N chains of best-of-N or self-consistency, the
    rollouts collect samples a problem (and label's, which take its temperature), A*'s K
    children. None where there is none."""
    e, c, s = config.eval, config.collect, config.search
    evaluated = set(e.methods) if "evaluate" in config.stages else set()
    copies = []
    chains = sorted(evaluated & set(CHAIN_METHODS))
    if e.temperature == 0 and e.samples > 1 and chains:
        copies.append(f"eval.temperature=0 gives {chains} eval.samples={e.samples} equal chains")
    if c.temperature == 0 and c.rollouts_per_problem > 1 and "collect" in config.stages:
        copies.append(f"collect.temperature=0 gives collect.rollouts_per_problem="
                      f"{c.rollouts_per_problem} equal rollouts (and label's rollouts take it)")
    if s.temperature == 0 and s.k > 1 and evaluated & {"qstar", "qstar_no_q"}:
        copies.append(f"search.temperature=0 makes A*'s search.k={s.k} children one step")
    if not copies:
        return None
    return (f"warning: temperature 0 decodes greedily, so {'; '.join(copies)}: each costs "
            "its copies' tokens for one sample's result")


def shallow_search_warning(config) -> str | None:
    """A line where A*'s expansion budget is below the steps a trace may take: each
    expansion takes the tree one step deeper at most, so Q* cannot finish a trace longer
    than search.max_expansions steps, where the other methods finish up to
    decode.max_steps. None where it can."""
    s, max_steps = config.search, config.decode.max_steps
    searched = sorted({"qstar", "qstar_no_q"} & set(config.eval.methods))
    if not searched or "evaluate" not in config.stages or s.max_expansions >= max_steps:
        return None
    return (f"warning: search.max_expansions={s.max_expansions} is below decode.max_steps="
            f"{max_steps}: A* ({', '.join(searched)}) takes its tree one step deeper an "
            f"expansion at most, so it cannot finish a trace longer than {s.max_expansions} "
            f"steps, which the other methods finish up to {max_steps}; raise "
            "search.max_expansions to decode.max_steps or more")


def warmup_warning(config) -> str | None:
    """A line where a policy trained from scratch never reaches its peak learning rate:
    ``policy_training.warmup_steps`` at or past its ``steps``. None otherwise."""
    pt = config.policy_training
    trains = "train_policy" in config.stages and config.policy.source == SCRATCH
    if not trains or pt.warmup_steps < pt.steps:
        return None
    return (f"warning: policy_training.warmup_steps={pt.warmup_steps} is not below its "
            f"steps={pt.steps}: the learning rate climbs the whole run and never reaches "
            f"policy_training.learning_rate={pt.learning_rate:g}; give fewer warmup steps")
