"""Searches on a real decoder whose page pool cannot hold every problem's tree at once:
the expander's call that finds the pool full leaves the decoder and the token counts as
it found them, and the searches that wait for pages, or are begun again to make room,
grow the trees that a pool with room for all grows."""

import numpy as np
import pytest

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.page_table import PagePoolExhausted
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.policy.expander import DecoderExpander
from qstar_jax.policy.runtime import PolicyRuntime
from qstar_jax.search.aggregate import Agg
from qstar_jax.search.astar import AStarConfig, AStarPlanner, Budget
from qstar_jax.search.driver import run_search
from qstar_jax.search.interface import ExpandRequest, Node, NoRoom
from qstar_jax.tasks.base import Problem
from tests.decoding.tiny_models import RANDOM_MAX_LEN
from tests.search.fakes import HiddenQ

NEWLINES = 8  # tokens 0-7 end a step: steps of a few tokens
PAGE_SIZE = 4
PROBLEMS = 4
CONFIG = AStarConfig(k=3, n_complete=2, agg=Agg.sum, max_steps=4,
                     budget=Budget(max_expansions=4))


class Letters:
    """A token below NEWLINES reads as a line break, any other as a letter; text encodes
    back the same way (a line break as token 0)."""

    def decode(self, ids):
        return "".join("\n" if i < NEWLINES else chr(ord("a") + (i - NEWLINES) % 26)
                       for i in ids)

    def encode(self, text):
        return [0 if c == "\n" else NEWLINES + (ord(c) - ord("a")) % 26 for c in text]

    encode_input = encode  # no BOS


class VowelAnswers:
    """A line holding a vowel is a final answer: some steps end their trace, most not."""

    def is_terminal_step(self, text):
        return any(c in "aeiou" for c in text)


def _runtime(random_model, prompts: list[str], *, pages: int, num_slots: int,
             newlines: np.ndarray) -> PolicyRuntime:
    """A runtime of one problem per prompt, on a decoder of ``pages`` pages."""
    decoder = Decoder(random_model, num_slots=num_slots, max_len=RANDOM_MAX_LEN,
                      newline_table=newlines, eos_ids=[], min_batch_bucket=4,
                      paging=Paging(page_size=PAGE_SIZE, num_pages=pages))
    return PolicyRuntime(decoder, Letters(), VowelAnswers(),
                         [Problem(id=f"p{i}", question="", reference=None)
                          for i in range(len(prompts))], prompts, seed=0, step_token_cap=6)


def _searched(random_model, pages: int, *, progress: bool = False):
    """The results of A* on PROBLEMS problems over ``pages`` pages, every page back."""
    newlines = np.zeros(64, bool)
    newlines[:NEWLINES] = True
    runtime = _runtime(random_model, ["bcdfg", "hjk", "lmnpqrst", "vwx"], pages=pages,
                       num_slots=48, newlines=newlines)
    results = run_search(PROBLEMS, lambda i: AStarPlanner(i, CONFIG), DecoderExpander(runtime),
                         HiddenQ(), include_trees=True, progress=progress, description="astar")
    runtime.decoder.pages.check_counts()
    assert runtime.decoder.pages.num_free_pages == pages and not runtime.decoder.pool.allocated
    return results


def _grown(results):
    """What each search grew and spent: its answer, its tree's nodes in the order it made
    them and its token counts and expansions."""
    return [(r.steps, [(n["id"], n["parent"], n["steps"], n["terminal"],
                        n["expansion_index"]) for n in r.tree["nodes"]],
             r.tree["expansion_order"], r.counters.generated_tokens,
             r.counters.prefilled_tokens, r.counters.expansions) for r in results]


def _scores(results):
    """Each search's score and its nodes' h: the same to float32 rounding, which rows of
    other problems beside a node's own in a call may move."""
    return [[r.score] + [n["h"] for n in r.tree["nodes"]] for r in results]


@pytest.fixture(scope="module")
def roomy(random_model):
    """The searches on 400 pages, where no call finds the pool full."""
    return _searched(random_model, pages=400, progress=True)


@pytest.mark.parametrize("pages, waited", [
    (20, "6 rounds left searches waiting, 0 searches were begun again"),
    (18, "2 rounds left searches waiting, 1 searches were begun again")])
def test_searches_short_of_pages_grow_the_trees_a_roomy_pool_grows(random_model, roomy,
                                                                  capsys, pages, waited):
    """The four searches peak at 34 pages (of 4 tokens) together. On 20, some rounds find
    the pool full and their planners wait; on 18, the waiting searches' trees also hold
    the pages the first needs, and one search is begun again (it and the searches not
    yet begun then each wait for one to finish: search/room.py). Every tree, answer and
    token count is the one of 400 pages (scores to float32 rounding), and every page
    goes back. (On 17 the third search, begun after the first two have finished, outgrows
    the pool alone, and the search stops with the pool's error.)"""
    capsys.readouterr()
    tight = _searched(random_model, pages=pages, progress=True)
    assert f"[qstar] astar: the KV cache was short of room: {waited} " in capsys.readouterr().out
    assert _grown(tight) == _grown(roomy)
    for tight_scores, roomy_scores in zip(_scores(tight), _scores(roomy)):
        np.testing.assert_allclose(tight_scores, roomy_scores, rtol=1e-5, atol=1e-6)


def test_a_search_the_pool_cannot_hold_alone_stops_with_the_pools_error(random_model):
    with pytest.raises(PagePoolExhausted, match="only 5 of 17 are free"):
        _searched(random_model, pages=17)


def test_a_call_that_finds_the_pool_full_leaves_the_decoder_and_counts_as_they_were(
        random_model):
    """Two roots of 24 tokens and their three children each need more of 14 pages than
    are free: the call raises NoRoom, caused by the pool's error, with no slot or page
    taken and nothing charged; the same call on a pool with room then succeeds."""
    runtime = _runtime(random_model, ["b" * 24, "c" * 24], pages=14, num_slots=16,
                       newlines=np.zeros(64, bool))
    decoder = runtime.decoder
    [held] = runtime.prefill_tokens([0], [[9, 10, 11]])  # a slot held before the call
    root = Node(id=0, parent=None, steps=(), depth=0, g=0.0, h=0.0, f=0.0, terminal=False,
                handle=None)
    requests = [ExpandRequest(problem_index=i, node=root, num_children=3, first_child=0,
                              temperature=1.0) for i in range(2)]
    free_pages, generated, prefilled = (decoder.pages.num_free_pages,
                                        dict(runtime.generated), dict(runtime.prefilled))
    with pytest.raises(NoRoom) as refused:
        DecoderExpander(runtime).expand(requests)
    assert isinstance(refused.value.__cause__, PagePoolExhausted)
    assert decoder.pool.allocated == {held}
    assert decoder.pages.num_free_pages == free_pages
    decoder.pages.check_counts()
    assert (dict(runtime.generated), dict(runtime.prefilled)) == (generated, prefilled)
    [children] = DecoderExpander(runtime).expand(requests[:1])
    assert len(children) == 3 and runtime.prefilled[0] == 3 + 24
