"""The notes summary.md gives under its table: what the scorer tokens column counts, how
much compiling the wall-clock holds, and what the 95% intervals cover."""

from __future__ import annotations

from typing import Sequence

# Methods that search alike, so the later evaluated of the two reuses the earlier's programs.
SEARCH_ALIKE = (("best_of_n", "best_of_n_matched"), ("qstar", "qstar_no_q"))

INTERVALS_NOTE = (
    "\nThe 95% intervals are over the evaluation problems alone (Wilson's score interval for "
    "each method's accuracy, Newcombe's paired interval for each qstar difference): they "
    "leave out what another training seed of the policy, Q̂ or the PRM, or other draws of "
    "the sampled steps, would change.\n")


def scorer_tokens_note(scorers: Sequence[str], uncounted: Sequence[str]) -> str:
    """What the scorer tokens column counts: the tokens of ``scorers`` (the models that run
    uncached over each child scored, named), none where they are none; ``uncounted``: the
    methods whose rows were logged before scorer tokens were counted."""
    cached = ("Q̂ or a learned PRM on the policy's own hidden states reads what the decoder "
              "computed, at no forward token of its own.")
    if scorers:
        note = (f"\nScorer tokens are those {' and '.join(scorers)} read over each child "
                "scored (its prompt, steps and step) in forward passes of their own that no "
                "cache serves (the Q̂ and PRM calls columns count the children); the "
                f"wall-clock includes them. {cached}")
    else:
        note = f"\nNo scorer here runs a forward pass of its own: {cached}"
    if uncounted:
        note += (f" {', '.join(uncounted)} show – for them: logged before scorer tokens "
                 "were counted.")
    return note + "\n"


def wall_clock_note(methods: Sequence[str]) -> str:
    """How much compiling each method's wall-clock holds, ``methods`` in the order they
    were evaluated: a program is compiled by the first method that runs it, and the
    persistent compile cache spares a rerun most compiling."""
    cache = ("with the persistent compile cache (QSTAR_COMPILE_CACHE) a rerun reads the "
             "programs back and compiles little at all")
    if len(methods) < 2:
        return f"\nWall-clock is the searches', compiling included; {cache}.\n"
    alike = [f"{later} after {earlier}" for pair in SEARCH_ALIKE if set(pair) <= set(methods)
             for earlier, later in [sorted(pair, key=list(methods).index)]]
    reuse = f" (as {' and '.join(alike)}, which search alike)" if alike else ""
    voted = (" (self_consistency, voting on best_of_n's chains, with best_of_n)"
             if {"self_consistency", "best_of_n"} <= set(methods) else "")
    return ("\nWall-clock is each method's own searches, compiling included. The methods were "
            f"evaluated in the table's order{voted}, and a program is compiled once, by the first "
            "method that runs it: a later method pays nothing for the programs an earlier one "
            f"compiled{reuse}, and {cache}. Which programs each method shares is not recorded, "
            "so an unknown part of the earlier methods' wall-clock is compiling that the later "
            "ones are spared: a difference in wall-clock is not one of search time alone.\n")
