import itertools
import math
import re

import pytest

from qstar_jax.search.interface import Generation, TextRequest
from qstar_jax.search.mctsr import (DONT_KNOW, MCTSrConfig, MCTSrPlanner, answer_q,
                                    holds_score, parse_score, uct)
from qstar_jax.search.planner import Outcome, RoundGuard, SearchResult
from qstar_jax.search.text_driver import run_text_search
from tests.search.fakes import ScriptedWriter


class Prompts:
    """Prompts that spell out what is asked, so a script can answer them."""

    def answer(self, i):
        return f"answer {i}"

    def critique(self, i, answer):
        return f"critique {answer}"

    def refine(self, i, answer, critique):
        return f"refine {answer} | {critique}"

    def score(self, i, answer):
        return f"score {answer}"


def planner(**config):
    return MCTSrPlanner(0, MCTSrConfig(**config), Prompts())


def test_scores_are_parsed_suppressed_and_aggregated():
    assert parse_score("Score: 85.") == 85 and parse_score("[-120]") == -100
    assert parse_score("no number") is None
    config = MCTSrConfig(score_ceiling=95, suppression=50)
    # 100 and 96 are above the ceiling: 50 and 46; Q = (46 + (50 + 90 + 46) / 3) / 2.
    assert answer_q([100, 90, 96], config) == pytest.approx((46 + 62) / 2)
    assert answer_q([95, 95], config) == 95  # at the ceiling: kept
    assert answer_q([], config) == -100
    # Ceiling 80, suppression 30: 90 counts 60, 80 (at the ceiling) 80; (60 + 70) / 2.
    lower = MCTSrConfig(score_ceiling=80, suppression=30)
    assert answer_q([90, 80, 70], lower) == pytest.approx(65)


def test_a_score_keeps_its_decimals_and_is_clipped_at_both_ends():
    assert parse_score("Score: 72.5/100") == 72.5 and parse_score("+30 points") == 30
    assert parse_score("I give it 150") == 100 and parse_score("-100.0") == -100


def test_a_reply_holds_its_score_once_nothing_later_can_change_what_is_read():
    """Every reply over a small alphabet, against every way it could go on: where
    ``holds_score`` says the score is there, ``parse_score`` reads the same from the reply
    as from any longer one."""
    alphabet = "1.-x "
    replies = ["".join(t) for n in range(6) for t in itertools.product(alphabet, repeat=n)]
    endings = ["".join(t) for n in range(3) for t in itertools.product(alphabet, repeat=n)]
    for reply in replies:
        read = {parse_score(reply + end) for end in endings}
        if holds_score(reply):
            assert read == {parse_score(reply)}, reply
    assert holds_score("Score: 85.\n") and holds_score("85/100") and not holds_score("85")
    assert not holds_score("8.") and holds_score("8. ") and not holds_score("no score")


def test_a_self_score_cut_off_at_its_token_limit_is_not_read():
    """score_max_tokens 2: "Score: 5" ran to the limit right after its number, which may
    be the start of "50", so it counts as a reply with no score; "5", ended before the
    limit, and "50 points", whose number was done before it, are read as they are."""
    p = planner(root="dont_know", score_samples=3, score_max_tokens=2)
    [request] = p.propose()
    assert request.max_tokens == 2
    p.absorb([[Generation(text="Score: 5", generated_tokens=2),
               Generation(text="5", generated_tokens=1),
               Generation(text="50 points", generated_tokens=2)]])
    assert p.nodes[0].scores == [5, 50]


def test_a_self_score_its_generator_cut_short_of_score_max_tokens_is_not_read():
    """A reply cut at a limit of the generator's own (a full cache row, its token cap)
    reads as one cut at score_max_tokens: "Score: 5" may be the start of "50"; in "Score:
    50 of" the number is whole, so it is read."""
    p = planner(root="dont_know", score_samples=2, score_max_tokens=32)
    p.propose()
    p.absorb([[Generation(text="Score: 5", generated_tokens=3, cut=True),
               Generation(text="Score: 50 of", generated_tokens=4, cut=True)]])
    assert p.nodes[0].scores == [50]


def hand_built(**config):
    """root R (0) [0]; A (1) [40] and B (2) [5] under R; C (3) [-10] under A."""
    p = planner(**config)
    root = p.add_node("R", [0], parent=None)
    a = p.add_node("A", [40], parent=root)
    p.add_node("B", [5], parent=root)
    p.add_node("C", [-10], parent=a)
    return p


def test_backpropagation_by_hand():
    p = hand_built()
    root, a, b, c = p.nodes
    # A: (40 + max(C -10)) / 2 = 15; R: (0 + max(A 15, B 5)) / 2 = 7.5.
    assert (a.q, root.q, b.q, c.q) == (15, 7.5, 5, -10)
    # N: each node's own evaluation, and one for each node made below it.
    assert (root.visits, a.visits, b.visits, c.visits) == (4, 2, 1, 1)
    assert [n.own_q for n in p.nodes] == [0, 40, 5, -10]


def test_uct_by_hand_explores_the_less_visited_node_as_c_grows():
    """R has its 2 children and A (15) beats it (7.5): fully expanded, not selectable. A
    (N 2, under R's 4) against B (N 1, under R's 4) and C (N 1, under A's 2)."""
    p = hand_built(max_children=2)
    root, a, b, c = p.nodes
    assert uct(a.q, 4, 2, p.config) == pytest.approx(
        15 + 1.4 * math.sqrt(math.log(5) / 2.00001))
    assert uct(b.q, 4, 1, p.config) == pytest.approx(5 + 1.4 * math.sqrt(math.log(5) / 1.00001))
    assert uct(c.q, 2, 1, p.config) == pytest.approx(-10 + 1.4 * math.sqrt(math.log(3) / 1.00001))
    assert p.select() is a  # 16.3 against B's 6.8 and C's -8.5
    assert hand_built(max_children=2, exploration=0.0).select().answer == "A"  # best Q: 15
    assert hand_built(max_children=2, exploration=30.0).select().answer == "B"  # 43.1 > 41.9


def test_a_node_no_child_improved_on_stays_open():
    def two_nodes(child_score):
        p = planner(max_children=1, exploration=0.0)
        p.add_node("child", [child_score], parent=p.add_node("root", [50], parent=None))
        return p

    # A worse child leaves the root open, and its Q (50 + 10) / 2 = 30 wins.
    assert two_nodes(10).select().answer == "root"
    # A child only as good: the root's Q stays (50 + 50) / 2 = 50, which the child does not
    # beat, so the root stays open and wins the tie to the older node.
    assert two_nodes(50).select().answer == "root"
    # A better child (90 > 70) makes the root fully expanded.
    assert two_nodes(90).select().answer == "child"


def test_a_node_with_max_children_one_of_which_improved_on_it_is_closed():
    """X (0) -> C (0) -> D (2), one child each: D's Q 2 beats C's 1, C's beats X's 0.5,
    so X and C are fully expanded and only D is open, though C's UCT (1 + 100 sqrt(ln 4 /
    12) = 35.0) beats D's (2 + 100 sqrt(ln 3 / 11) = 33.6) and X's (33.2) under ε = 10."""
    p = planner(max_children=1, exploration=100.0, epsilon=10.0)
    p.add_node("D", [2], parent=p.add_node("C", [0], parent=p.add_node("X", [0], parent=None)))
    assert [(n.q, n.visits) for n in p.nodes] == [(0.5, 3), (1, 2), (2, 1)]
    assert p.select().answer == "D"


def test_the_roots_are_children_of_one_virtual_parent_in_uct():
    """R1 (Q' 0 after its child X; N 2) and R2 (5; N 1) under a parent of N 3: R2's UCT
    5 + 10 sqrt(ln 4 / 2) = 13.3 beats R1's 0 + 10 sqrt(ln 4 / 3) = 6.8 and X's -82.6.
    (When a root stood as its own parent, R2 had no exploration term and R1 won.)"""
    p = planner(exploration=10.0, epsilon=1.0)
    p.add_node("X", [-90], parent=p.add_node("R1", [90], parent=None))
    p.add_node("R2", [5], parent=None)
    assert [(n.q, n.visits) for n in p.nodes] == [(0, 2), (-90, 1), (5, 1)]
    assert p.select().answer == "R2"


def test_a_fresh_answer_is_not_refined_ahead_of_a_better_one():
    """At the defaults (c 1.4, ε 1e-5) a new node's N is 1, not 0: a child of Q 40 gets
    40 + 1.4 sqrt(ln 3) = 41.5, not the 368 more of ε alone, so the untried root R2 (45:
    46.6) is refined next, ahead of R1 (Q' 45, N 2: 46.2) and the child."""
    p = planner()
    p.add_node("child", [40], parent=p.add_node("R1", [50], parent=None))
    p.add_node("R2", [45], parent=None)
    assert p.select().answer == "R2"


def test_the_answer_is_the_best_own_q_not_the_backpropagated_one():
    """R (60) with a child A (0) backpropagates to Q' (60 + 0) / 2 = 30, below the root S
    (40); the answer is still R, whose own Q is the highest, while the node refined next
    (without exploration) is S, whose Q' is. An answer's steps are its non-empty lines."""
    p = planner(exploration=0.0)
    p.add_node("A", [0], parent=p.add_node("R\n\n  \nThe answer is: 6\n", [60], parent=None))
    p.add_node("S", [40], parent=None)
    assert [n.q for n in p.nodes] == [30, 0, 40] and p.select().answer == "S"
    result = p.result()
    assert (result.steps, result.node_id, result.score) == (("R", "The answer is: 6"), 0, 60)
    assert [t.steps for t in result.trajectories] == [("R", "The answer is: 6"), ("A",), ("S",)]


def test_equal_q_goes_to_the_older_node():
    p = planner(exploration=0.0)
    p.add_node("first", [50], parent=None)
    p.add_node("second", [50], parent=None)
    assert p.best().answer == "first"  # the answer of equal own Q
    assert p.select().answer == "first"  # the node refined next, of equal UCT


SCRIPT = {
    f"score {DONT_KNOW}": ["-50", "-60", "no idea"],
    f"critique {DONT_KNOW}": ["be concrete"],
    f"refine {DONT_KNOW} | be concrete": ["The answer is: 7"],
    "score The answer is: 7": ["100", "90", "96"],
    "critique The answer is: 7": ["check the sum"],
    "refine The answer is: 7 | check the sum": ["The answer is: 8"],
    "score The answer is: 8": ["40", "40", "40"],
}


def test_search_answers_with_the_best_q_node_not_the_right_one():
    writer = ScriptedWriter(SCRIPT)
    [result] = run_text_search(1, lambda i: planner(rollouts=2, root="dont_know",
                                                    temperature=0.7, score_temperature=0.3),
                               writer, include_trees=True, progress=False)
    asked = [(r.prompt.split()[0], r.num_samples, r.temperature, r.stream)
             for r in writer.requests]
    assert asked == [("score", 3, 0.3, "score/0"),
                     ("critique", 1, 0.7, "critique/0"), ("refine", 1, 0.7, "refine/0"),
                     ("score", 3, 0.3, "score/1"),
                     ("critique", 1, 0.7, "critique/1"), ("refine", 1, 0.7, "refine/1"),
                     ("score", 3, 0.3, "score/2")]
    # Q: seed (-60 + -55) / 2 = -57.5; "7" (46 + 62) / 2 = 54; "8" 40. Rollout 2 refines
    # "7", the fresh node. Say "8" is right: the answer is still "7", the best Q.
    assert [(t.steps, t.score) for t in result.trajectories] == [
        ((DONT_KNOW,), -57.5), (("The answer is: 7",), 54), (("The answer is: 8",), 40)]
    assert result.steps == ("The answer is: 7",) and result.node_id == 1
    assert [(n["parent"], n["critique"]) for n in result.tree["nodes"]] == [
        (None, None), (0, "be concrete"), (1, "check the sum")]
    c = result.counters
    assert c.expansions == 7
    assert c.generated_tokens == sum(len(t.split()) for texts in SCRIPT.values()
                                     for t in texts)
    assert c.prefilled_tokens == sum(len(r.prompt.split()) for r in writer.requests)


def test_greedy_root_is_the_policy_answer_at_temperature_zero():
    writer = ScriptedWriter({"answer 0": ["The answer is: 7"], **SCRIPT})
    [result] = run_text_search(1, lambda i: planner(rollouts=1, root="greedy",
                                                    score_max_tokens=8), writer, progress=False)
    assert [(r.stream, r.temperature, r.max_tokens) for r in writer.requests[:2]] == [
        ("answer", 0.0, None), ("score/0", 0.95, 8)]
    assert [t.steps for t in result.trajectories] == [("The answer is: 7",),
                                                      ("The answer is: 8",)]


def test_self_scores_take_the_configs_sample_count():
    """score_samples 2: each self-score asks for 2 samples and Q reads those two; the
    refined answer's 100 and 90 give (50 + (50 + 90) / 2) / 2 = 60, its third sample 96 is
    never asked for."""
    writer = ScriptedWriter(SCRIPT)
    [result] = run_text_search(1, lambda i: planner(rollouts=1, root="dont_know",
                                                    score_samples=2), writer, progress=False)
    assert [(r.stream, r.num_samples) for r in writer.requests] == [
        ("score/0", 2), ("critique/0", 1), ("refine/0", 1), ("score/1", 2)]
    assert [t.score for t in result.trajectories] == [-57.5, 60]
    assert result.steps == ("The answer is: 7",)


def test_the_default_seeds_two_roots_as_the_papers_code_does():
    writer = ScriptedWriter({"answer 0": ["The answer is: 7"], **SCRIPT})
    [result] = run_text_search(1, lambda i: planner(rollouts=1), writer, include_trees=True,
                               progress=False)
    assert [r.stream for r in writer.requests] == ["answer", "score/0", "score/1",
                                                   "critique/0", "refine/0", "score/2"]
    # Only self-scores are cut short: their first number is all that is read, so they
    # may also stop once it is complete.
    assert [r.max_tokens for r in writer.requests] == [None, 32, 32, None, None, 32]
    assert [r.read_complete for r in writer.requests] == [None, holds_score, holds_score,
                                                          None, None, holds_score]
    nodes = result.tree["nodes"]
    # Roots: the greedy answer (Q 54) and the seed (Q -57.5); the one rollout refines the
    # greedy answer, the better root, into "8".
    assert [(n["answer"], n["parent"]) for n in nodes] == [
        ("The answer is: 7", None), (DONT_KNOW, None), ("The answer is: 8", 0)]
    assert result.steps == ("The answer is: 7",)


def test_bad_mctsr_config_is_a_clear_error():
    with pytest.raises(ValueError, match="rollouts must be an integer >= 1"):
        MCTSrConfig(rollouts=0)
    with pytest.raises(ValueError, match="'best'"):
        MCTSrConfig(root="best")
    for bad, message in [({"rollouts": True}, "rollouts must be an integer >= 1, got True"),
                         ({"score_max_tokens": 0}, "score_max_tokens must be an integer >= 1"),
                         ({"epsilon": 0.0}, "exploration >= 0 and epsilon > 0, got 1.4 and 0.0"),
                         ({"exploration": -0.5}, "epsilon > 0, got -0.5 and 1e-05"),
                         ({"score_temperature": -0.1}, "temperatures must be >= 0")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            MCTSrConfig(**bad)


class AskAll(RoundGuard):
    """A text planner that asks all its prompts in one round (after an idle round when
    ``idle``); its result's steps are the replies."""

    def __init__(self, problem_index, prompts, *, idle=False):
        super().__init__()
        self.problem_index, self.prompts, self.idle = problem_index, prompts, idle
        self.replies = ()

    def propose(self):
        self._check_can_propose()
        if self.idle:
            self.idle = False
            return []
        self._expanding = [TextRequest(problem_index=self.problem_index, prompt=p,
                                       num_samples=1, temperature=0.0, stream=p)
                           for p in self.prompts]
        return list(self._expanding)

    def absorb(self, replies):
        self._check_absorb(replies)
        self.replies = tuple(g.text for [g] in replies)
        self._expanding, self._done = [], True

    def result(self, *, include_tree=False):
        return SearchResult(problem_index=self.problem_index, steps=self.replies, node_id=0,
                            outcome=Outcome.complete, score=0.0, trajectories=())


QUESTIONS = {"q a": ["x y"], "q b": ["z"], "q c": ["w w w"]}


def test_text_search_counts_each_request_and_hands_each_planner_its_replies():
    writer = ScriptedWriter(QUESTIONS)
    prompts = [["q a", "q b"], ["q c"]]
    results = run_text_search(2, lambda i: AskAll(i, prompts[i]), writer, progress=False)
    assert [r.steps for r in results] == [("x y", "z"), ("w w w",)]
    assert [r.prompt for r in writer.requests] == ["q a", "q b", "q c"]
    assert [(r.counters.expansions, r.counters.generated_tokens, r.counters.prefilled_tokens)
            for r in results] == [(2, 3, 4), (1, 3, 2)]


def test_text_search_refuses_an_idle_planner_and_a_wrong_number_of_samples():
    with pytest.raises(RuntimeError, match="problem 0 proposed nothing but is not done"):
        run_text_search(1, lambda i: AskAll(i, ["q a"], idle=True), ScriptedWriter(QUESTIONS),
                        progress=False)

    class Doubling(ScriptedWriter):
        def generate(self, requests):
            return [texts * 2 for texts in super().generate(requests)]

    with pytest.raises(ValueError, match=r"generator returned \[2\] completions for "
                                         r"requests of \[1\]"):
        run_text_search(1, lambda i: AskAll(i, ["q a"]), Doubling(QUESTIONS), progress=False)


def test_text_search_calls_the_generator_only_in_rounds_that_ask_something():
    """MCTSr finishes in the propose after its last self-score: that round asks nothing,
    so the generator is not called with no requests."""
    calls = []

    class Counting(ScriptedWriter):
        def generate(self, requests):
            calls.append([r.stream for r in requests])
            return super().generate(requests)

    run_text_search(1, lambda i: planner(rollouts=2, root="dont_know"), Counting(SCRIPT),
                    progress=False)
    assert calls == [["score/0"], ["critique/0"], ["refine/0"], ["score/1"], ["critique/1"],
                     ["refine/1"], ["score/2"]]
