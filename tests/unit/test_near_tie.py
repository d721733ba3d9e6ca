"""The near-tie rule that batched-vs-solo comparisons use (tests/near_tie.py), on hand-made logits."""
from __future__ import annotations

import numpy as np

from tests.near_tie import NEAR_TIE, SoloRun, check_batched, departure_margin

# token ids: 0 end of generation, 1 "a", 2 "b", 3 "ab", 4 "c"
PIECES = [b"", b"a", b"b", b"ab", b"c"]


def solo(tokens: list[int], rows: list[list[float]]) -> SoloRun:
    text = b"".join(PIECES[t] for t in tokens).decode()
    return SoloRun(tokens, [np.array(r, dtype=np.float64) for r in rows], [PIECES[t] for t in tokens], {0}, text)


# solo run "a" "b" then end; at step 1 "b" leads "c" by 0.1 (a near tie), "a" by 5
RUN = solo([1, 2], [[0, 9, 0, 0, 0], [0, -3, 2.1, 0, 2.0], [9, 0, 0, 0, 0]])


def test_the_same_text_is_no_departure():
    assert departure_margin(RUN, "ab", PIECES) is None
    assert check_batched("ab", "ab", RUN, PIECES) is None


def test_a_departure_at_a_near_tie_is_accepted():
    step, margin = departure_margin(RUN, "ac", PIECES)
    assert step == 1 and abs(margin - 0.1) < 1e-9
    assert check_batched("ab", "ac", RUN, PIECES) is None


def test_a_departure_with_a_clear_margin_is_refused_with_the_step_and_margin():
    step, margin = departure_margin(RUN, "aa", PIECES)
    assert step == 1 and abs(margin - 5.1) < 1e-9
    why = check_batched("ab", "aa", RUN, PIECES)
    assert why and "step 1" in why and "5.100" in why and f"< {NEAR_TIE}" in why


def test_stopping_early_is_a_departure_to_the_end_token():
    step, margin = departure_margin(RUN, "a", PIECES)  # end of generation instead of "b" at step 1
    assert step == 1 and abs(margin - 2.1) < 1e-9


def test_a_token_that_spans_two_solo_tokens_is_a_candidate():
    # the other run wrote "ab" as one token at step 0, where the solo run took "a": margin 9 - 8.95
    run = solo([1, 2], [[0, 9, 0, 8.95, 0], [0, 0, 5, 0, 0], [9, 0, 0, 0, 0]])
    step, margin = departure_margin(run, "abc", PIECES)
    assert step == 0 and abs(margin - 0.05) < 1e-9


def test_the_served_solo_answer_is_held_to_the_reference_too():
    assert check_batched("aa", "ab", RUN, PIECES) is not None  # the served solo departs at margin 5.1
