"""``ArithmeticTask``: arithmetic chains behind the ``Task`` protocol.

Problems are generated, not read: ``load`` is a pure function of the config, the split
and the seed. Grading reads only the final ``#### N`` line, as GSM8K's does; the lines
before it matter through the number they lead to. The task's exact solver completes any
partial trace the way a perfect policy would (``solver_completion``): the "stronger
model" of the paper's third way to label Q̂, and the exact value of a state.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

from qstar_jax.tasks.arithmetic.steps import (ARITHMETIC_ALPHABET, Operation, format_answer,
                                              format_step, parse_answer, parse_step)
from qstar_jax.tasks.arithmetic.world import ArithmeticConfig, Chain, generate_chains
from qstar_jax.tasks.base import (STEP_SEPARATOR, ChatFormatter, Problem, last_line,
                                  split_steps)


class ArithmeticTask:
    name = "arithmetic"
    alphabet = ARITHMETIC_ALPHABET  # a from-scratch policy's char-level vocabulary

    def __init__(self, config: ArithmeticConfig | Mapping[str, Any] | None = None):
        if config is None or isinstance(config, ArithmeticConfig):
            self.config = config or ArithmeticConfig()
        elif isinstance(config, Mapping):
            unknown = sorted(set(config) - set(ArithmeticConfig.__dataclass_fields__))
            if unknown:
                raise ValueError(f"ArithmeticConfig has no field(s) {unknown}; its fields are: "
                                 f"{', '.join(ArithmeticConfig.__dataclass_fields__)}")
            self.config = ArithmeticConfig(**config)
        else:
            raise ValueError(f"ArithmeticTask: config must be an ArithmeticConfig or a "
                             f"mapping of its fields, got {config!r}")

    def problem(self, chain: Chain) -> Problem:
        return Problem(id=f"arithmetic/{chain.question}", question=chain.question,
                       reference=str(chain.values[-1]),
                       metadata={"start": chain.start,
                                 "operations": [[o.op, o.operand] for o in chain.operations]})

    def load(self, split: str, *, limit: int | None = None, seed: int = 0,
             skip_malformed: bool = False) -> list[Problem]:
        """``limit`` (default: the config's size for the split) distinct problems of the
        split, a fixed sequence per seed; generated problems are never malformed."""
        count = self.config.split_size(split) if limit is None else limit
        if count < 0:
            raise ValueError(f"ArithmeticTask.load: limit={limit} must be >= 0")
        return [self.problem(c) for c in generate_chains(self.config, split, count, seed=seed)]

    def prompt(self, problem: Problem, chat: ChatFormatter | None = None) -> str:
        if chat is None:
            return problem.question + STEP_SEPARATOR
        return chat([{"role": "user", "content": problem.question}])

    def is_terminal_step(self, step: str) -> bool:
        return parse_answer(step.removesuffix(STEP_SEPARATOR)) is not None

    def extract_answer(self, completion: str) -> str | None:
        steps = split_steps(completion)
        value = parse_answer(steps[-1]) if steps else None
        return None if value is None else str(value)

    def grade(self, problem: Problem, completion: str) -> bool:
        return self.extract_answer(completion) == problem.reference

    def solution_steps(self, problem: Problem, rng: random.Random | None = None) -> list[str]:
        """The worked solution: one line per operation, then the answer line (the chain has
        one solution; ``rng`` is accepted for the from-scratch trainer's interface)."""
        return self.solver_completion(problem, ())

    def solver_completion(self, problem: Problem, steps: Sequence[str]) -> list[str]:
        """The lines a perfect solver writes after ``steps``: it reads the value the last
        computation line reached (the start if none), applies the operations not yet
        written out, and states the answer. Nothing after a finished trace; after a line
        that is not a step, ``#### -1``, an answer line that cannot be right (values are
        never negative, and the answer parser reads none), so the state's value is 0."""
        chain = _chain(problem)
        said = [last_line(step) for step in steps]  # past the blank lines that joined them
        if said and parse_answer(said[-1]) is not None:
            return []
        value, done = chain.start, 0
        for line in said:
            parsed = parse_step(line)
            if parsed is None:
                return [format_answer(-1)]
            value, done = parsed.result, done + 1
        lines = []
        for operation in chain.operations[done:]:
            lines.append(format_step(value, operation))
            value = operation.apply(value)
        return lines + [format_answer(value)]

    def wrong_step(self, problem: Problem, steps: Sequence[str], rng: random.Random) -> str:
        """A plausible wrong next line after ``steps`` (a prefix of the solution), of the
        kinds a policy gets wrong: a slip in the result's digits, a misread operand or
        earlier value, an operation skipped, or an early or miscopied answer. For training
        a value model on states known to be dead: the line leaves no way to the answer."""
        right = self.solver_completion(problem, steps)[0]
        chain = _chain(problem)
        done = len(steps)
        value = chain.values[done]
        kinds = ["digit"] + (["operand", "value", "skip", "early"]
                             if done < len(chain.operations) else [])
        for _ in range(20):
            kind = rng.choice(kinds)
            if kind == "digit":
                line = _change_a_digit(right, rng, last_number_only=True)
            elif kind == "operand":
                other = rng.choice(chain.operations)
                line = format_step(value, Operation(chain.operations[done].op, other.operand))
            elif kind == "value":
                wrong = int(_change_a_digit(str(value), rng, last_number_only=True))
                line = format_step(wrong, chain.operations[done])
            elif kind == "skip":
                line = format_step(value, chain.operations[min(done + 1,
                                                               len(chain.operations) - 1)])
            else:
                line = format_answer(value)
            # A slip can land on the right value by chance (an early answer equal to the
            # final one): only a line that dooms the trace will do.
            if (parse_step(line) or parse_answer(line) is not None) \
                    and not self.can_still_succeed(problem, [*steps, line]):
                return line
        return format_answer(chain.values[-1] + 1)

    def can_still_succeed(self, problem: Problem, steps: Sequence[str]) -> bool:
        """Exact value of a partial trace: does the solver's completion reach the answer?"""
        return self.grade(problem, STEP_SEPARATOR.join([*steps, *self.solver_completion(
            problem, steps)]))


def _change_a_digit(text: str, rng: random.Random, *, last_number_only: bool) -> str:
    """``text`` with one digit of its last number changed (never to a leading zero)."""
    start = text.rfind(" ") + 1 if last_number_only else 0
    places = [i for i in range(start, len(text)) if text[i].isdigit()]
    i = rng.choice(places)
    digits = [d for d in "0123456789" if d != text[i] and not (d == "0" and i == start
                                                                and len(text) - start > 1)]
    return text[:i] + rng.choice(digits) + text[i + 1:]


def _chain(problem: Problem) -> Chain:
    try:
        return Chain(problem.metadata["start"],
                     tuple(Operation(op, n) for op, n in problem.metadata["operations"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"Problem {problem.id!r} has no arithmetic chain in its metadata; "
                         "make problems with ArithmeticTask.load") from None
