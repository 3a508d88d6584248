"""The policy as search and rollout collection see it: a decoder, a tokenizer and a task.

``PolicyRuntime`` turns problems into prefilled cache slots and sampled token rows into
step texts. ``DecoderExpander`` (search's ``StepExpander``) and ``DecoderRolloutSampler``
(Q̂ labelling's ``RolloutSampler``) are thin adapters over it, so both measure compute
the same way and draw the same random numbers for the same (problem, node, position).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import re
import zlib
from typing import Callable, Iterator, Sequence

import jax
import numpy as np

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.kv_cache import SlotPoolExhausted
from qstar_jax.decoding.page_table import PagePoolExhausted
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_chunks import StepBatch
from qstar_jax.decoding.trie_steps import sample_trie_steps
from qstar_jax.decoding.step_sampler import EndReason
from qstar_jax.models.tokenizer import Tokenizer
from qstar_jax.tasks.base import STEP_SEPARATOR, Problem, Task, last_line, state_text


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampledStep:
    text: str
    token_ids: tuple[int, ...]
    logprob: float
    hidden: np.ndarray
    ends_trace: bool
    slot: int
    carry: str = ""  # what the row holds past the step's line break (``step_line``)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampledText:
    text: str  # the tokens decoded (EOS left out) through the first final-answer line
    token_ids: tuple[int, ...]
    cut: bool = False  # ended at a limit (its max_tokens or a full slot), not of itself


def stable_id(*parts) -> int:
    """A 31-bit id from text parts, the same in every process and run."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def step_line(decoded: str, ended_at_newline: bool) -> tuple[str, str]:
    """A step's text from its decoded tokens, and what its row holds past that text (the
    text that opens the next line, which the next step's text starts with). A step that
    ended at a newline runs up to the first newline after some text: blank lines before
    that text are the step's (they joined it: ``decoding.line_tables``), so the trace's
    text stays what its row holds; a merged token may carry text past the newline (SmolLM2
    writes a newline and the next line's indentation as one token, ``"\\n   "``), which is
    the next line's, not this step's. A step of whitespace alone (blank lines that were
    steps) ends at its first newline. A step that ended otherwise (cut at its cap, at EOS,
    in a full row) holds no newline after text, and all of it is its text, a step of blank
    lines alone included.

    >>> step_line("def f(x):\\n   ", True)
    ('def f(x):', '   ')
    """
    if not ended_at_newline:
        return decoded, ""
    text = re.search(r"\S", decoded)
    end = decoded.find(STEP_SEPARATOR, text.start() if text else 0)
    if end < 0:
        return decoded, ""
    return decoded[:end], decoded[end + len(STEP_SEPARATOR):]


def row_carry(tokenizer: Tokenizer, tokens: Sequence[int]) -> str:
    """What a row of ``tokens`` holds past its last line break, where its last token
    carries it (a prefilled prompt or trace ends with its break: nothing, as a rule)."""
    if not tokens:
        return ""
    last = tokenizer.decode([tokens[-1]])
    return last.rsplit(STEP_SEPARATOR, 1)[1] if STEP_SEPARATOR in last else ""


def line_break_token(tokenizer: Tokenizer) -> int:
    """The token that ends a step cut at its cap: of the separator's tokens, the one whose
    text holds it (a Llama-2 tokenizer encodes "\n" as "▁" and the byte "<0x0A>")."""
    tokens = tokenizer.encode(STEP_SEPARATOR)
    breaks = [t for t in tokens if STEP_SEPARATOR in tokenizer.decode([t])]
    if len(breaks) != 1:
        raise ValueError(f"the step separator {STEP_SEPARATOR!r} encodes as {tokens}, with no "
                         "one token holding it to end a step cut at decode.step_token_cap")
    return breaks[0]


class PromptTooLong(ValueError):
    """A prompt longer than a cache row (the decoder's max_len): a question, or a prompt of
    MCTSr or ToT's value prompt quoting the policy's own texts."""


class PolicyRuntime:
    """Prompts in slots, steps out of them; counts prefilled and generated tokens."""

    def __init__(self, decoder: Decoder, tokenizer: Tokenizer, task: Task,
                 problems: Sequence[Problem], prompts: Sequence[str], *, seed: int,
                 step_token_cap: int, top_k: int = 0, top_p: float = 1.0):
        self.decoder, self.tokenizer, self.task = decoder, tokenizer, task
        self.problems, self.prompts = list(problems), list(prompts)
        self.step_token_cap, self.top_k, self.top_p = step_token_cap, top_k, top_p
        ids = np.asarray([stable_id(p.id) for p in self.problems], np.uint32)
        # Every problem's key in one array, from which a call gathers its rows (stacking
        # them per call compiled a concatenation of thousands of operands: seconds a call).
        self._keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(seed), ids)
        self.generated = collections.Counter()
        self.prefilled = collections.Counter()
        self._prompts_with_room: set[int] = set()  # problems whose prompt leaves room
        # What each slot's row holds past its last line break (``step_line``): the start
        # of the next step's line, which that step's text opens with. Kept by the step
        # calls; a whole text (``sample_texts``) leaves it be, as no step is sampled after
        # a text in its slot (the text generator frees such a row or keeps it only as a
        # prefill's source, and a prefill notes its own).
        self._carries: dict[int, str] = {}

    @contextlib.contextmanager
    def undone_when_full(self) -> Iterator[None]:
        """Runs the body; when a decoder call in it finds the cache full (which raises
        before that call changes anything), frees every slot the body allocated and puts
        the token counts back, then raises again: the body may then be run again, later,
        as if it had never run. The body must not free slots it did not allocate."""
        before = self.decoder.pool.allocated
        generated, prefilled = self.generated.copy(), self.prefilled.copy()
        try:
            yield
        except (SlotPoolExhausted, PagePoolExhausted):
            taken = sorted(self.decoder.pool.allocated - before)
            if taken:
                self.free(taken)
            for counts, kept in ((self.generated, generated), (self.prefilled, prefilled)):
                counts.clear()
                counts.update(kept)
            raise

    def prefill(self, problem_indices: Sequence[int], prefixes: Sequence[Sequence[str]]
                ) -> list[int]:
        """A fresh slot per item holding the prompt and the given steps. A prompt alone
        that fills a cache row is refused: its search would answer an empty text."""
        self._check_problem_indices(problem_indices)
        for i in {i for i, steps in zip(problem_indices, prefixes) if not steps}:
            self._check_room_after_prompt(i)
        return self.prefill_texts(problem_indices, [
            state_text(self.prompts[i], steps) for i, steps in zip(problem_indices, prefixes)])

    def _check_problem_indices(self, problem_indices: Sequence[int]) -> None:
        """Raise ValueError unless each index names one of this runtime's problems. Left
        unchecked, an index past the end would draw the last problem's random numbers (a
        JAX gather clamps it) and be charged tokens under a problem that does not exist."""
        count = len(self.problems)
        bad = [i for i in problem_indices
               if not (isinstance(i, (int, np.integer)) and 0 <= i < count)]
        if bad:
            raise ValueError(f"problem_indices {bad} fall outside [0, {count}): this runtime "
                             f"holds {count} problems")

    def _check_room_after_prompt(self, i: int) -> None:
        if i in self._prompts_with_room:
            return
        length = len(self.tokenizer.encode_input(self.prompts[i]))
        if length >= self.decoder.max_len:
            raise PromptTooLong(f"a prompt of problem {self.problems[i].id} has {length} "
                                f"tokens, filling a cache row of {self.decoder.max_len} "
                                "with no room left for a step")
        self._prompts_with_room.add(i)

    def prefill_texts(self, problem_indices: Sequence[int], texts: Sequence[str]) -> list[int]:
        """A fresh slot per text holding it, charged to its problem."""
        return self.prefill_tokens(problem_indices,
                                   [self.tokenizer.encode_input(t) for t in texts])

    def prefill_tokens(self, problem_indices: Sequence[int],
                       token_lists: Sequence[Sequence[int]], *,
                       sources: Sequence[int | None] | None = None,
                       shared: Sequence[int] | None = None) -> list[int]:
        """A fresh slot per token list holding it, charged to its problem. Where
        ``sources[i]`` is a slot, the new slot is forked from it and keeps its first
        ``shared[i]`` tokens (which must be the list's), so only the rest is computed and
        charged. On failure (a full pool) the slots taken here go back."""
        self._check_problem_indices(problem_indices)
        if not problem_indices:
            return []
        for i, tokens in zip(problem_indices, token_lists):
            if len(tokens) > self.decoder.max_len:
                raise PromptTooLong(f"a prompt of problem {self.problems[i].id} has "
                                    f"{len(tokens)} tokens, more than a cache row's "
                                    f"{self.decoder.max_len}")
        n = len(token_lists)
        sources = [None] * n if sources is None else list(sources)
        # A copy, so that zeroing the fresh rows' counts below leaves the caller's array be.
        starts = np.array([0] * n if shared is None else shared, np.int64, copy=True)
        starts[[k for k in range(n) if sources[k] is None]] = 0
        forked = [k for k in range(n) if sources[k] is not None]
        fresh = [k for k in range(n) if sources[k] is None]
        slots = np.zeros(n, np.int64)
        taken: list[int] = []
        try:
            if forked:
                parents = [sources[k] for k in forked]
                slots[forked] = children = self.decoder.allocate(len(forked), near=parents)
                taken += children
                self.decoder.fork(parents, children)
            if fresh:
                slots[fresh] = new = self.decoder.allocate(len(fresh))
                taken += new
            self.decoder.prefill(slots, [tokens[start:] for tokens, start in
                                         zip(token_lists, starts)], starts)
        except BaseException:
            if taken:
                self.decoder.free(taken)
            raise
        for i, tokens, start in zip(problem_indices, token_lists, starts):
            self.prefilled[i] += len(tokens) - int(start)
        self._carries.update(zip(slots.tolist(), (row_carry(self.tokenizer, tokens)
                                                  for tokens in token_lists)))
        return slots.tolist()

    def sample(self, slots: Sequence[int], problem_indices: Sequence[int],
               node_ids: Sequence[int], temperatures: Sequence[float]) -> list[SampledStep]:
        """One step for each slot, which it extends in place."""
        if not slots:
            return []
        batch = self._sample_batch(slots, problem_indices, node_ids, temperatures,
                                   self.step_token_cap, newline_ends=True)
        steps = self._break_cut_lines([self._step(batch, row) for row in range(len(slots))],
                                      [EndReason(int(r)) for r in batch.end_reason])
        for i, step in zip(problem_indices, steps):
            self.generated[i] += len(step.token_ids)
        return self._carried(steps)

    def sample_texts(self, slots: Sequence[int], problem_indices: Sequence[int],
                     node_ids: Sequence[int], temperatures: Sequence[float],
                     max_tokens: Sequence[int],
                     read_complete: Sequence[Callable[[str], bool] | None] | None = None
                     ) -> list[SampledText]:
        """A whole text after each slot, which it extends in place: newlines do not end
        it; EOS, ``max_tokens[i]`` tokens, a full slot, a complete final-answer line
        (the task's terminal step, checked between the sampler's chunks, so up to a chunk
        of tokens past it stay sampled, and are charged, but are not in the text), or
        ``read_complete[i]`` calling the text so far complete (checked there too; the
        text is all that was sampled) do."""
        if not slots:
            return []
        checks = list(read_complete or [None] * len(slots))

        def done(row: int, tokens: list[int]) -> bool:
            return self._holds_answer_line(tokens) or (
                checks[row] is not None and checks[row](self.tokenizer.decode(tokens)))

        batch = self._sample_batch(slots, problem_indices, node_ids, temperatures,
                                   np.asarray(max_tokens), newline_ends=False, done=done)
        texts = []
        for row, i in enumerate(problem_indices):
            tokens = batch.row_tokens(row)
            reason = EndReason(int(batch.end_reason[row]))
            eos = reason == EndReason.EOS
            lines = self.tokenizer.decode(tokens[:-1] if eos else tokens).split(STEP_SEPARATOR)
            end = self._answer_line(lines)
            texts.append(SampledText(token_ids=tuple(tokens), text=STEP_SEPARATOR.join(
                lines if end is None else lines[:end + 1]).strip(),
                cut=reason in (EndReason.CAP, EndReason.CACHE_FULL)))
            self.generated[i] += len(tokens)
        return texts

    def _answer_line(self, lines: list[str]) -> int | None:
        """The index of the first final-answer line (the task's terminal step), if any."""
        return next((k for k, line in enumerate(lines) if self.task.is_terminal_step(line)),
                    None)

    def _holds_answer_line(self, tokens: list[int]) -> bool:
        """Whether the text of ``tokens`` has a complete final-answer line."""
        lines = self.tokenizer.decode(tokens).split(STEP_SEPARATOR)[:-1]
        return self._answer_line(lines) is not None

    def _sample_batch(self, slots, problem_indices, node_ids, temperatures, max_tokens, *,
                      newline_ends: bool, done=None) -> StepBatch:
        self._check_problem_indices(problem_indices)
        params = SamplingParams.make(len(slots),
                                     temperature=np.asarray(temperatures, np.float32),
                                     top_k=self.top_k, top_p=self.top_p)
        # Unsigned indices: JAX skips the negative-index fix-up ops, which would each
        # compile once per distinct row count.
        keys = self._keys[np.asarray(problem_indices, np.uint32)]
        return self.decoder.sample_steps(slots, problem_keys=keys, node_ids=node_ids,
                                         params=params, max_tokens=max_tokens,
                                         newline_ends=newline_ends, done=done)

    def sample_trie(self, slots: Sequence[int], problem_indices: Sequence[int],
                    group_ids: Sequence[int], temperatures: Sequence[float],
                    counts: Sequence[int]) -> list[list[SampledStep]]:
        """``counts[g]`` independent steps after ``slots[g]``, sampled as a trie
        (``sample_trie_steps``): a problem is charged the distinct tokens computed. Each
        step has its own slot, ``slots[g]`` among them; a step drawn c times is forked into
        c slots after sampling (a cache copy, no tokens)."""
        self._check_problem_indices(problem_indices)
        if not slots:
            return []
        params = SamplingParams.make(len(slots),
                                     temperature=np.asarray(temperatures, np.float32),
                                     top_k=self.top_k, top_p=self.top_p)
        tries, fed = sample_trie_steps(self.decoder, slots, counts, key_table=self._keys,
                                       key_rows=problem_indices, group_ids=group_ids,
                                       params=params, max_tokens=self.step_token_cap)
        flat = [s for steps in tries for s in steps]
        # Each step opens with what its group's row carried, read before its slots change.
        carried = [self._carries.get(slot, "") for slot, steps in zip(slots, tries)
                   for _ in steps]
        # Line breaks go in before the forks, so that a step's copies hold its break too.
        broken = iter(self._carried(self._break_cut_lines(
            [self._sampled_step(list(s.tokens), s.end_reason, s.logprob, s.hidden, s.slot,
                                opening=opening)
             for s, opening in zip(flat, carried)], [s.end_reason for s in flat])))
        copies = iter(self.fork([s.slot for s in flat], [s.count - 1 for s in flat]))
        out = []
        for i, tokens, steps in zip(problem_indices, fed, tries):
            group = []
            for s in steps:
                step = next(broken)
                self.generated[i] += len(step.token_ids) - len(s.tokens)  # a line break
                group += [step, *(dataclasses.replace(step, slot=c) for c in next(copies))]
            self.generated[i] += tokens
            out.append(group)
        return out

    def _step(self, batch: StepBatch, row: int) -> SampledStep:
        tokens = batch.row_tokens(row)
        slot = int(batch.slots[row])
        return self._sampled_step(tokens, EndReason(int(batch.end_reason[row])),
                                  float(batch.logprobs[row, :len(tokens)].sum()),
                                  batch.hidden[row], slot,
                                  opening=self._carries.get(slot, ""))

    def _sampled_step(self, tokens: list[int], reason: EndReason, logprob: float,
                      hidden: np.ndarray, slot: int, *, opening: str) -> SampledStep:
        """The step of ``tokens``; its text opens with ``opening``, what its row carried
        past its last line break (a merged token's indentation: ``step_line``)."""
        text_tokens = tokens[:-1] if reason == EndReason.EOS else tokens
        line, carry = step_line(self.tokenizer.decode(text_tokens),
                                reason == EndReason.NEWLINE)
        text = opening + line
        # A step cut at the cap is a step like any other; EOS and a full row end the trace.
        ends = (reason in (EndReason.EOS, EndReason.CACHE_FULL)
                or self.task.is_terminal_step(last_line(text)))
        return SampledStep(text=text, token_ids=tuple(tokens), logprob=logprob, hidden=hidden,
                           ends_trace=ends, slot=slot, carry=carry)

    def _carried(self, steps: list[SampledStep]) -> list[SampledStep]:
        """``steps``, each slot noted as carrying what its step's row holds past it."""
        self._carries.update((step.slot, step.carry) for step in steps)
        return steps

    @functools.cached_property
    def _line_break(self) -> int:
        """The token written after a step cut at its cap (``line_break_token``), found once:
        the tokenizer is read only when a step is first cut."""
        return line_break_token(self.tokenizer)

    def _break_cut_lines(self, steps: list[SampledStep], reasons: Sequence[EndReason]
                         ) -> list[SampledStep]:
        """``steps`` with a line break written after each one that reached the token cap
        and goes on: the trace's text (its steps each ended by the separator) is then what
        its slot holds, so the next step starts a new line, as it does after a prefill of
        the text. The break is one of the step's tokens: its log-probability joins the
        step's and the hidden state after it becomes the step's, the features the label
        stage reads from the text (``qvalue.features``)."""
        cut = [k for k, (step, reason) in enumerate(zip(steps, reasons))
               if reason == EndReason.CAP and not step.ends_trace]
        if not cut:
            return steps
        line_break = self._line_break
        logprobs, hidden = self.decoder.append_token([steps[k].slot for k in cut], line_break)
        steps = list(steps)
        for k, logprob, after in zip(cut, logprobs, hidden):
            steps[k] = dataclasses.replace(
                steps[k], token_ids=steps[k].token_ids + (line_break,),
                logprob=steps[k].logprob + float(logprob), hidden=after, carry="")
        return steps

    def fork(self, parents: Sequence[int], counts: Sequence[int]) -> list[list[int]]:
        """``counts[i]`` new slots continuing from ``parents[i]``, beside it."""
        parent_of_child = np.repeat(np.asarray(parents), counts)
        children = self.decoder.allocate(len(parent_of_child), near=parent_of_child)
        if children:
            self.decoder.fork(parent_of_child, children)
        self._carries.update((child, self._carries.get(int(parent), ""))
                             for child, parent in zip(children, parent_of_child))
        out, start = [], 0
        for n in counts:
            out.append(children[start:start + n])
            start += n
        return out

    def free(self, slots: Sequence[int]) -> None:
        if len(slots):
            self.decoder.free(slots)
            for slot in slots:
                self._carries.pop(int(slot), None)
