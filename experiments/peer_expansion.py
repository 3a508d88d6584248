"""bench_search's run (c): a node expanded the way LLM Reasoners' and MCTSr's HF backends
do it, its text rebuilt, re-encoded and handed to ``transformers`` ``generate``."""

from __future__ import annotations

import collections
from typing import Any, Sequence


class TransformersExpander:
    """Search's StepExpander the way LLM Reasoners' and MCTSr's HF backends expand a node:
    the node's text rebuilt (prompt and steps), encoded and handed to ``generate`` for K
    samples that stop at a newline token or EOS, nothing kept between calls (every child's
    handle is None). Steps end a trace as ours do: at EOS, at the cap, or on the task's
    answer line. torch's generator is seeded per (problem, node, first child)."""

    def __init__(self, model, tokenizer, task, problems, prompts, *, step_token_cap: int,
                 kv_token_bytes: int):
        import torch
        import transformers

        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.problems, self.prompts = problems, prompts
        self.kv_token_bytes = kv_token_bytes
        self.newline = tokenizer.newline_table(model.config.vocab_size)
        self.eos = set(tokenizer.eos_ids)
        self.generation = dict(max_new_tokens=step_token_cap,
                               eos_token_id=list(tokenizer.eos_ids), pad_token_id=tokenizer.pad_id)
        newline = torch.tensor(self.newline, device=model.device)

        class NewlineStop(transformers.StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return newline[input_ids[:, -1]]

        self.stop = transformers.StoppingCriteriaList([NewlineStop()])
        self.generated, self.prefilled = collections.Counter(), collections.Counter()
        self.peak_kv_bytes = 0

    def expand(self, requests):
        return [self._expand(request) for request in requests]

    def _expand(self, request):
        import torch
        import transformers

        from qstar_jax.policy.runtime import stable_id
        from qstar_jax.tasks.base import state_text

        i, k = request.problem_index, request.num_children
        ids = self.tokenizer.encode(state_text(self.prompts[i], request.node.steps))
        torch.manual_seed(stable_id(self.problems[i].id, request.node.id, request.first_child))
        sampling = (dict(do_sample=True, temperature=request.temperature, top_k=0, top_p=1.0)
                    if request.temperature > 0 else dict(do_sample=False))
        generation = transformers.GenerationConfig(**self.generation, **sampling,
                                                   num_return_sequences=k)
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([ids], device=self.model.device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.model.device),
                generation_config=generation, stopping_criteria=self.stop)
        self.prefilled[i] += k * len(ids)
        self.peak_kv_bytes = max(self.peak_kv_bytes, k * out.shape[1] * self.kv_token_bytes)
        steps = [self._step(row) for row in out[:, len(ids):].tolist()]
        self.generated[i] += sum(len(step.token_ids) for step in steps)
        return steps

    def _step(self, row: list[int]):
        from qstar_jax.search.interface import Step
        from qstar_jax.tasks.base import STEP_SEPARATOR

        end = next((j + 1 for j, t in enumerate(row) if self.newline[t] or t in self.eos),
                   len(row))
        tokens = row[:end]
        at_eos, at_newline = tokens[-1] in self.eos, bool(self.newline[tokens[-1]])
        text = self.tokenizer.decode(tokens[:-1] if at_eos else tokens)
        text = text.split(STEP_SEPARATOR)[0]
        return Step(text=text, token_ids=tuple(tokens), logprob=0.0, hidden=None,
                    ends_trace=at_eos or not at_newline or self.task.is_terminal_step(text),
                    handle=None)

    def release(self, handles: Sequence[Any]) -> None:
        pass

    def generated_tokens(self, problem_index: int) -> int:
        return self.generated[problem_index]

    def prefilled_tokens(self, problem_index: int) -> int:
        return self.prefilled[problem_index]
