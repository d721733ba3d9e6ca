"""How a decode step is laid out (rows per ubatch a multiple of 4) and what a lone stream drafts."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from appliance.serve.scheduler import ALIGN, Scheduler, SamplingParams, Sequence


def layout(slots: int, used: list[int]) -> tuple[list[int], int]:
    return Scheduler._layout(SimpleNamespace(slots=slots), used)


@pytest.mark.parametrize("slots, used, window, per_slot", [
    (8, [0], [0], 4),                      # a lone stream: its token and 3 drafts
    (8, [3, 4], [3, 4], 2),                # two neighbours: 2 rows each
    (8, [0, 2], [0, 1, 2, 3], 1),          # a gap: throwaway rows in slots 1 and 3
    (8, [0, 1, 2, 3, 4, 5, 6, 7], list(range(8)), 1),
    (8, [6, 7], [6, 7], 2),
    (8, [2, 6, 7], list(range(1, 9)), 1),  # 8 wide: up to the scratch slot, then left
    (8, [5, 6, 7], [5, 6, 7, 8], 1),
    (2, [0, 1], [0, 1], 2),                # too few slots to widen: 2 rows each
    (1, [0], [0], 4),
])
def test_every_layout_is_a_multiple_of_four_consecutive_rows(slots, used, window, per_slot):
    got_window, got_per_slot = layout(slots, used)
    assert (got_window, got_per_slot) == (window, per_slot)
    assert len(got_window) * got_per_slot % ALIGN == 0
    assert set(used) <= set(got_window) and got_window[-1] <= slots  # slot ``slots`` is the scratch stream


def test_a_window_too_wide_for_the_slots_moves_left():
    assert layout(8, [3, 7]) == (list(range(1, 9)), 1)  # 5 wide -> 8, which ends at the scratch slot
    window, per_slot = layout(3, [0, 2])  # 3 slots: 2 of 4 streams (scratch included) used, a gap
    assert (window, per_slot) == ([0, 1, 2, 3], 1)


def draft(prompt: list[int], generated: list[int], n: int = 3) -> list[int]:
    seq = Sequence(prompt=prompt, params=SamplingParams(), adapter=None, generated=generated)
    return Scheduler._draft(seq, n)


def test_drafts_follow_the_latest_earlier_occurrence_of_the_last_tokens():
    assert draft([5, 1, 2, 3, 9, 8, 7, 1, 2, 3, 4, 6], [1, 2]) == [3, 4, 6]
    assert draft([1, 2, 3, 4], [1, 2]) == [3, 4, 1]  # runs into the tail of the text itself
    assert draft([7, 8], [9]) == [9, 9, 9]  # nothing to look up: the last token again
    assert draft([1, 2], [3], 0) == []


def test_routed_steps_set_every_loaded_adapter_until_they_idle():
    """The patch stacks the adapters set, padding ranks to the largest, which changes a row's
    rounding (tests/integration/test_batch_invariance.py); so a routed step sets every loaded
    adapter (and one removed while its request still runs), never just the running requests'."""
    from appliance.serve.scheduler import IDLE_ADAPTER_STEPS

    state = SimpleNamespace(_adapters={"hr": "p-hr", "legal": "p-legal", "ops": "p-ops"}, steps=0,
                            _last_adapter_step=-IDLE_ADAPTER_STEPS - 1)

    def routed(*pointers):
        return Scheduler._routed_adapters(state, [SimpleNamespace(pointer=p) for p in pointers])

    assert routed(None, None) == []  # base-only traffic: no adapter set
    assert set(routed("p-hr", None)) == {"p-hr", "p-legal", "p-ops"}
    state.steps = IDLE_ADAPTER_STEPS
    assert set(routed(None)) == {"p-hr", "p-legal", "p-ops"}  # kept while idle ...
    state.steps = IDLE_ADAPTER_STEPS + 1
    assert routed(None) == []  # ... for IDLE_ADAPTER_STEPS steps
    assert set(routed("p-removed")) == {"p-hr", "p-legal", "p-ops", "p-removed"}
