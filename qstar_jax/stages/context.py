"""What every stage of a run shares: the config, the output folder, the task, the policy.

Stages communicate only through files in the output folder, so each can be skipped when
its outputs exist and a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax.numpy as jnp
from jax.sharding import Mesh

from qstar_jax.config import POLICY_DTYPES, SCRATCH, RunConfig
from qstar_jax.config_loading import load_config
from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.decoding.step_sampler import ROW_WINDOWS
from qstar_jax.models.config import UnsupportedConfigError
from qstar_jax.models.loading import LoadedModel, load_model, missing_tokenizer, no_chat_template
from qstar_jax.models.sharded_params import PARAMS_FOLDER
from qstar_jax.models.weights import CheckpointError
from qstar_jax.outputs.disk_full import quiet_orbax_failures
from qstar_jax.outputs.durable import DamagedOutputError, first_line, read_failure
from qstar_jax.parallel import DATA
from qstar_jax.policy.runtime import PolicyRuntime
from qstar_jax.tasks.base import Problem, Task
from qstar_jax.tasks.registry import make_task

DTYPES = {name: getattr(jnp, name) for name in POLICY_DTYPES}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunContext:
    config: RunConfig
    out: Path
    # The devices decoding and Q-hat training spread over (qstar_jax.parallel); None: one.
    mesh: Mesh | None = None

    @classmethod
    def of_run(cls, folder: Path) -> "RunContext":
        """A finished (or started) run's context, from the config it saved in ``folder``."""
        return cls(config=load_config(folder / "config.yaml"), out=folder)

    @functools.cached_property
    def task(self) -> Task:
        """The configured task. A synthetic world's settings sit in the task config's field
        of its name (``task.countdown``): its constructor gets them as ``config``, under
        whatever ``task.options.config`` overrides, and the other options as they are (an
        unknown one refused, as every task's is)."""
        t = self.config.task
        world = getattr(t, t.name, None)
        if dataclasses.is_dataclass(world):
            return make_task(t.name, **{**t.options, "config": {
                **dataclasses.asdict(world), **t.options.get("config", {})}})
        return make_task(t.name, **t.options)

    def searches_per_batch(self, slots_per_search: int, *, full_rows: bool = False) -> int:
        """How many searches of ``slots_per_search`` slots each fit the slot pool side by
        side (at least one). A search's slots all sit on one ``data`` shard (a child goes
        on its parent's shard, so no step moves cache rows between devices), so it is the
        shards times what one shard holds, not the pool divided by the search.

        ``full_rows``: each slot may grow to a max_len row of its own (collect's and
        label's rollouts, which share little more than the prompt). On a paged cache
        ``decode.slots`` counts page-table rows, sized for evaluate's trees, whose slots
        share most of their pages; such a batch is then also held to what each shard's
        pages hold at max_len // page_size pages a slot, the most a slot's page table
        holds, so it cannot run the pool dry."""
        shards = 1 if self.mesh is None else self.mesh.shape[DATA]
        searches = shards * (self.config.decode.slots // shards // slots_per_search)
        d = self.config.decode
        if full_rows and d.page_size:  # each shard's pages hold its own searches
            row_pages = d.max_len // d.page_size
            searches = min(searches, shards * (d.num_pages // shards
                                               // (slots_per_search * row_pages)))
        return max(1, searches)

    @property
    def rollouts_path(self) -> Path:
        return self.out / "rollouts.jsonl"

    @property
    def labels_path(self) -> Path:
        return self.out / "labels.jsonl"

    @property
    def step_outcomes_path(self) -> Path:
        """Rewards of the completions sampled after each labelled step (the PRM's labels)."""
        return self.out / "step_outcomes.jsonl"

    @property
    def q_dir(self) -> Path:
        return (self.out / "q_checkpoint").absolute()

    @property
    def policy_dir(self) -> Path:
        """Where the policy comes from: the trained one, or the configured checkpoint."""
        source = self.config.policy.source
        return self.out / "policy" if source == SCRATCH else Path(source)

    @property
    def second_opinion_dir(self) -> Path | None:
        """The second policy whose opinion Q̂ reads (None: none): the one train_policy
        trains beside the policy, or the configured checkpoint."""
        source = self.config.q_train.second_opinion
        return self.out / "second_policy" if source == SCRATCH else (
            None if source is None else Path(source))

    @functools.cached_property
    def policy(self) -> LoadedModel:
        loaded = self.load(self.policy_dir)
        if self.config.policy.chat_template and not loaded.tokenizer.has_chat_template:
            raise no_chat_template(self.policy_dir)
        return loaded

    @functools.cached_property
    def second_policy(self) -> LoadedModel:
        """The model at ``second_opinion_dir`` (loaded once: Q̂ and its greedy row share it)."""
        return self.load(self.second_opinion_dir)

    def load(self, source: str | Path) -> LoadedModel:
        """The model at ``source``; one this or another run trained, restored onto the
        run's mesh (``load_model``), a DamagedOutputError where its parameters do not
        read back."""
        try:
            with quiet_orbax_failures():  # its coroutines' errors where a read fails
                loaded = load_model(source, dtype=DTYPES[self.config.policy.dtype],
                                    mesh=self.mesh)
        except Exception as error:  # noqa: BLE001 (orbax wraps some in a bare Exception)
            params = Path(source) / PARAMS_FOLDER
            cause = read_failure(error)
            if (cause is None or isinstance(error, (CheckpointError, UnsupportedConfigError))
                    or self.mesh is None or not params.is_dir()):
                raise
            remedy = (f"delete {source} so that stage train_policy trains it again"
                      if Path(source).parent == self.out else
                      "restore it from a copy or train it again")
            raise DamagedOutputError(f"cannot read the trained parameters in {params} "
                                     f"({first_line(cause)}): they are damaged; {remedy}"
                                     ) from error
        if loaded.tokenizer is None:
            raise missing_tokenizer(source)
        return loaded

    def problems(self, split: str, count: int) -> list[Problem]:
        return self.task.load(split, limit=count, seed=self.config.seed,
                              skip_malformed=self.config.task.skip_malformed)

    def train_problems(self) -> list[Problem]:
        """The problems the policy's rollouts, their labels and Q̂ learn from."""
        return self.problems(self.config.task.train_split, self.config.task.train_problems)

    def prompts(self, problems: list[Problem]) -> list[str]:
        chat = None
        if self.config.policy.chat_template:
            chat = self.policy.tokenizer.apply_chat_template
        return [self.task.prompt(p, chat) for p in problems]

    def runtime(self, problems: list[Problem], *,
                model: LoadedModel | None = None, rows: int | None = None) -> PolicyRuntime:
        """The policy (or ``model``) decoding ``problems``, in a cache of decode.slots
        (and decode.pages), or of ``rows`` max_len rows (a multiple of the data shards)."""
        d = self.config.decode
        loaded = self.policy if model is None else model
        tokenizer = loaded.tokenizer
        if rows is not None:  # each row's pages, as decode.pages defaults to them
            d = dataclasses.replace(d, slots=rows, pages=0)
        paging = Paging(page_size=d.page_size, num_pages=d.num_pages) if d.page_size else None
        decoder = Decoder(loaded.model, num_slots=d.slots, max_len=d.max_len,
                          newline_table=tokenizer.newline_table(loaded.config.vocab_size),
                          blank_steps=tokenizer.blank_step_tables(loaded.config.vocab_size),
                          eos_ids=tokenizer.eos_ids, step_chunk=d.step_chunk, paging=paging,
                          min_batch_bucket=d.min_rows, layer_weights=d.layer_weights,
                          row_windows=ROW_WINDOWS[d.row_windows], mesh=self.mesh)
        return PolicyRuntime(decoder, tokenizer, self.task, problems, self.prompts(problems),
                             seed=self.config.seed, step_token_cap=d.step_token_cap)
