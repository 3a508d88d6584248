import json

import pytest

from qstar_jax.tasks.prompts import (CRITIQUE_ASK, REFINE_ASK, SCORE_ASK, VALUE_ASK,
                                     PromptFormat, ReasonerPrompts, WorkedExample,
                                     build_prompt, check_n_shot)

TWO_EXAMPLES = PromptFormat(instruction="Solve it.",
                            examples=(WorkedExample(question="1+1?", solution="2"),
                                      WorkedExample(question="2+2?", solution="4")))


@pytest.mark.parametrize("n_shot", [-1, 3])
def test_n_shot_outside_the_examples_is_refused(n_shot):
    # -1 would otherwise slice off the last example and show the rest.
    message = rf"n_shot must be between 0 and 2 \(the worked examples there are\), got {n_shot}"
    with pytest.raises(ValueError, match=message):
        check_n_shot(TWO_EXAMPLES, n_shot)
    with pytest.raises(ValueError, match=message):
        build_prompt(TWO_EXAMPLES, "3+3?", n_shot=n_shot)


def test_plain_prompts_lay_out_the_conversation_in_order():
    prompts = ReasonerPrompts(questions=("What is 2+3?",))
    assert prompts.score(0, "The answer is: 5") == (
        f"Question: What is 2+3?\nAnswer:\nThe answer is: 5\n\n{SCORE_ASK}\nReply:\n")
    assert prompts.refine(0, "A", "too short") == (
        f"Question: What is 2+3?\nAnswer:\nA\n\n{CRITIQUE_ASK}\n\ntoo short\n\n"
        f"{REFINE_ASK}\nReply:\n")
    assert prompts.value(0, ("x", "y")).startswith("Question: What is 2+3?\nAnswer:\nx\ny\n\n"
                                                   + VALUE_ASK)


def test_chat_prompts_alternate_roles_and_end_with_the_user_asking():
    prompts = ReasonerPrompts(questions=("q0", "q1"), chat=json.dumps)
    assert json.loads(prompts.refine(1, "A", "C")) == [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "A"},
        {"role": "user", "content": CRITIQUE_ASK}, {"role": "assistant", "content": "C"},
        {"role": "user", "content": REFINE_ASK}]
    [only] = json.loads(prompts.answer(0))
    assert only["role"] == "user" and only["content"].startswith("q0\n\nThink step by step.")


def test_each_request_asks_its_own_question_after_the_answer():
    # answer: the question alone; critique and score: the answer, then their own ask.
    prompts = ReasonerPrompts(questions=("What is 2+3?",))
    assert prompts.answer(0) == (
        "Question: What is 2+3?\n\nThink step by step. End with the line "
        "'The answer is: <your final answer>'.\nReply:\n")
    assert prompts.critique(0, "The answer is: 6") == (
        f"Question: What is 2+3?\nAnswer:\nThe answer is: 6\n\n{CRITIQUE_ASK}\nReply:\n")
    chat = ReasonerPrompts(questions=("q0",), chat=json.dumps)
    for request, ask in ((chat.critique, CRITIQUE_ASK), (chat.score, SCORE_ASK)):
        assert json.loads(request(0, "A")) == [
            {"role": "user", "content": "q0"}, {"role": "assistant", "content": "A"},
            {"role": "user", "content": ask}]
