"""prompt_style: the policies' own zero-shot prompts (MetaMath's Alpaca prompt for GSM8K,
GSM-Symbolic and MATH; DeepSeek-Math's chat turn for MATH), and their traces as the
models write them: steps, terminal steps and grading."""

import jinja2
import pytest

from qstar_jax.tasks.base import Problem, state_text
from qstar_jax.tasks.registry import make_task

METAMATH_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{question}\n\n### Response: Let's think step "
    "by step.")
# deepseek-math-7b-rl's tokenizer_config.json chat template (DeepSeek LLM's).
DEEPSEEK_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
DEEPSEEK_BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
DEEPSEEK_EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
ZERO_SHOT = {"n_shot": 0}
JANET = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and "
         "bakes muffins for her friends every day with four. She sells the remainder at the "
         "farmers' market daily for $2 per fresh duck egg. How much in dollars does she make "
         "every day at the farmers' market?")


def deepseek_chat(messages):
    return jinja2.Template(DEEPSEEK_TEMPLATE).render(
        messages=messages, bos_token=DEEPSEEK_BOS, eos_token=DEEPSEEK_EOS,
        add_generation_prompt=True)


def decoder_steps(completion: str) -> list[str]:
    """The steps the decoder cuts ``completion`` into: one a line, blank lines joining the
    line after them (``decoding.line_tables``)."""
    steps, blank = [], ""
    for line in completion.split("\n"):
        if line.strip():
            steps.append(blank + line)
            blank = ""
        else:
            blank += line + "\n"
    return steps


def trace(task, prompt: str, completion: str) -> list[tuple[str, bool]]:
    """(step, terminal) for the steps of ``completion`` up to its first terminal one, after
    checking that prompt and steps make the text the model wrote."""
    steps = decoder_steps(completion)
    assert state_text(prompt, steps) == prompt + completion + "\n"
    marked = [(step, task.is_terminal_step(step)) for step in steps]
    return marked[:[terminal for _, terminal in marked].index(True) + 1]


@pytest.mark.parametrize("name", ["gsm8k", "gsm_symbolic", "math", "math500"])
def test_metamath_prompt_is_its_alpaca_template_in_plain_text(name):
    task = make_task(name, prompt_style="metamath", **ZERO_SHOT)
    problem = Problem(id="p", question=JANET, reference="18")
    prompt = task.prompt(problem)
    assert prompt == METAMATH_PROMPT.replace("{question}", JANET)
    assert prompt.startswith("Below is an instruction")  # BOS is the tokenizer's to add
    with pytest.raises(ValueError, match="^prompt_style=metamath is the model's plain-text "
                                         "prompt, which a chat template would wrap in another "
                                         "layout: set policy.chat_template=false$"):
        task.prompt(problem, chat=deepseek_chat)


@pytest.mark.parametrize("name", ["math", "math500"])
def test_deepseek_math_prompt_is_the_user_turn_alone(name):
    task = make_task(name, prompt_style="deepseek_math", **ZERO_SHOT)
    problem = Problem(id="p", question="What is the sum of the roots of $x^2 - 7x + 10 = 0$?",
                      reference="7")
    seen = []
    prompt = task.prompt(problem, chat=lambda m: seen.append(m) or deepseek_chat(m))
    assert seen == [[{"role": "user", "content": (
        "What is the sum of the roots of $x^2 - 7x + 10 = 0$?\nPlease reason step by step, "
        "and put your final answer within \\boxed{}.")}]]
    assert prompt == (f"{DEEPSEEK_BOS}User: What is the sum of the roots of $x^2 - 7x + 10 = 0$?"
                      "\nPlease reason step by step, and put your final answer within "
                      "\\boxed{}.\n\nAssistant:")
    with pytest.raises(ValueError, match="^prompt_style=deepseek_math is the user turn of the "
                                         "model's chat template: set policy.chat_template=true$"):
        task.prompt(problem)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("gsm8k", {"prompt_style": "metamath"},
     r"^prompt_style=metamath is zero-shot, as the model was evaluated: set n_shot=0 \(got 4\)$"),
    ("math", {"prompt_style": "deepseek_math", "n_shot": 2}, "set n_shot=0 \\(got 2\\)"),
    ("gsm8k", {"prompt_style": "deepseek_math", "n_shot": 0},
     r"^prompt_style must be one of \['default', 'metamath'\], got 'deepseek_math'$"),
    ("gsm_symbolic", {"prompt_style": "alpaca"}, "must be one of \\['default', 'metamath'\\]"),
    ("math500", {"prompt_style": "Metamath", "n_shot": 0},
     r"must be one of \['default', 'metamath', 'deepseek_math'\], got 'Metamath'$"),
])
def test_styles_a_task_cannot_prompt_with_fail_when_it_is_made(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_task(name, **options)


@pytest.mark.parametrize("name", ["gsm8k", "gsm_symbolic", "math", "math500"])
def test_the_default_style_is_the_tasks_own_few_shot_prompt(name):
    problem = Problem(id="p", question="What is 2 + 3?", reference="5")
    default = make_task(name)
    assert default.prompt_style == "default"
    assert default.prompt(problem) == make_task(name, prompt_style="default").prompt(problem)
    assert default.prompt(problem).endswith("Question: What is 2 + 3?\nAnswer:\n")


# MetaMath-7B's GSM8K answer (MetaMathQA's layout): the first step goes on after "Let's
# think step by step." and a "#### N" line comes before the answer line.
METAMATH_GSM8K = (
    " Janet's ducks lay 16 eggs per day.\n"
    "She eats 3 for breakfast and bakes muffins with 4, so she uses 3 + 4 = 7 eggs.\n"
    "She has 16 - 7 = 9 eggs left to sell.\n"
    "She sells each egg for $2, so she makes 9 * $2 = $18 every day.\n"
    "#### 18\n"
    "The answer is: 18")


@pytest.mark.parametrize("name", ["gsm8k", "gsm_symbolic"])
def test_a_metamath_gsm8k_trace_splits_into_steps_and_ends_at_its_answer(name):
    task = make_task(name, prompt_style="metamath", **ZERO_SHOT)
    prompt = task.prompt(Problem(id="p", question=JANET, reference="18"))
    assert (prompt + METAMATH_GSM8K).count("step by step. Janet's ducks lay 16 eggs") == 1
    steps = trace(task, prompt, METAMATH_GSM8K)
    assert [terminal for _, terminal in steps] == [False] * 4 + [True]
    assert steps[0][0] == " Janet's ducks lay 16 eggs per day."
    assert task.is_terminal_step("The answer is: 18")
    # A model that starts a new line first: the blank line joins the first step.
    first_step = trace(task, prompt, "\n" + METAMATH_GSM8K)[0][0]
    assert first_step == "\n Janet's ducks lay 16 eggs per day."
    for style in ({"prompt_style": "metamath", "n_shot": 0}, {}):  # grading ignores the prompt
        graded = make_task(name, **style)
        assert graded.grade(Problem(id="p", question=JANET, reference="18"), METAMATH_GSM8K)
        assert not graded.grade(Problem(id="p", question=JANET, reference="9"), METAMATH_GSM8K)
        cut = METAMATH_GSM8K.replace("#### 18\n", "")  # the answer line alone ends it too
        assert graded.extract_answer(cut) == "18"


def test_a_metamath_math_trace_ends_at_its_box_or_unboxed_answer_line():
    task = make_task("math", prompt_style="metamath", **ZERO_SHOT)
    problem = Problem(id="p", question="Compute $\\frac{2}{3} + \\frac{1}{6}$.",
                      reference="\\frac{5}{6}")
    prompt = task.prompt(problem)
    boxed = (" We have $\\frac{2}{3} = \\frac{4}{6}$.\n"
             "So the sum is $\\frac{4}{6} + \\frac{1}{6} = \\boxed{\\frac{5}{6}}$.\n"
             "The answer is: \\frac{5}{6}")
    assert [t for _, t in trace(task, prompt, boxed)] == [False, True]
    unboxed = boxed.replace("\\boxed{\\frac{5}{6}}", "\\frac{5}{6}")
    assert [t for _, t in trace(task, prompt, unboxed)] == [False, False, True]
    assert task.grade(problem, boxed) and task.grade(problem, unboxed)
    assert not task.grade(problem, unboxed.replace("is: \\frac{5}{6}", "is: \\frac{1}{2}"))


# DeepSeek-Math-7B-RL's style: paragraphs between blank lines, $$ displays over several
# lines, aligned equations, and the answer boxed at the end.
DEEPSEEK_ALIGNED = (
    " To solve the system, we add the two equations:\n"
    "\n"
    "$$\n"
    "\\begin{aligned}\n"
    "x + y &= 10 \\\\\n"
    "x - y &= 2\n"
    "\\end{aligned}\n"
    "$$\n"
    "\n"
    "Adding them gives $2x = 12$, so $x = 6$, and then $y = 10 - 6 = 4$.\n"
    "\n"
    "Therefore, $xy = 6 \\cdot 4 = 24$.\n"
    "\n"
    "The answer is $\\boxed{24}$.")
DEEPSEEK_DISPLAYED_BOX = (
    " By Vieta's formulas, the sum of the roots of $x^2 - 7x + 10 = 0$ is $-\\frac{b}{a}$:\n"
    "\n"
    "$$\n"
    "-\\frac{-7}{1} = 7\n"
    "$$\n"
    "\n"
    "So the sum of the roots is\n"
    "$$\n"
    "\\boxed{7}\n"
    "$$")
DEEPSEEK_INLINE_DISPLAY = (
    " Over the common denominator $6$:\n"
    "$$\\frac{2}{3} + \\frac{1}{6} = \\frac{4}{6} + \\frac{1}{6} = \\boxed{\\frac{5}{6}}$$\n"
    "The answer is $\\boxed{\\frac{5}{6}}$.")


@pytest.mark.parametrize(("completion", "reference", "steps_to_answer", "last_step"), [
    (DEEPSEEK_ALIGNED, "24", 10, "\nThe answer is $\\boxed{24}$."),
    (DEEPSEEK_DISPLAYED_BOX, "7", 7, "\\boxed{7}"),
    (DEEPSEEK_INLINE_DISPLAY, "\\frac{5}{6}", 2,
     "$$\\frac{2}{3} + \\frac{1}{6} = \\frac{4}{6} + \\frac{1}{6} = \\boxed{\\frac{5}{6}}$$"),
])
def test_a_deepseek_math_trace_ends_at_its_first_complete_box(completion, reference,
                                                               steps_to_answer, last_step):
    task = make_task("math", prompt_style="deepseek_math", **ZERO_SHOT)
    problem = Problem(id="p", question="A problem.", reference=reference)
    prompt = task.prompt(problem, chat=deepseek_chat)
    assert prompt.endswith("\n\nAssistant:")  # the first step goes on after a space
    steps = trace(task, prompt, completion)
    assert len(steps) == steps_to_answer and steps[-1] == (last_step, True)
    assert steps[0][0].startswith(" ") and not any(t for _, t in steps[:-1])
    for graded in (task, make_task("math")):  # grading ignores the prompt
        assert graded.extract_answer(completion) == reference
        assert graded.grade(problem, completion)
        assert not graded.grade(Problem(id="p", question="", reference="25"), completion)


def test_a_box_that_has_not_closed_on_its_line_is_no_terminal_step():
    task = make_task("math", prompt_style="deepseek_math", **ZERO_SHOT)
    assert not task.is_terminal_step("$$\\boxed{")
    assert not task.is_terminal_step("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}")
    assert not task.is_terminal_step("$$\\boxed{\\begin{pmatrix} 1 \\\\ 2")  # cut off
    assert task.is_terminal_step("$$\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}$$")
