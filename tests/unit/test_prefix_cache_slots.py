"""Which slot a request takes: its cached prefix, without scattering the running slots."""
from __future__ import annotations

from appliance.serve.prefix_cache import Entry, PrefixCache

PROMPT = list(range(100, 160))


def cache_with(resident: dict[int, tuple[list[int], int | None]], slots: int = 8) -> PrefixCache:
    cache = PrefixCache(slots, host_bytes=1 << 20)
    for slot, (tokens, adapter) in resident.items():
        cache.keep_resident(slot, tokens, adapter)
    return cache


def test_a_prefix_in_a_far_slot_is_copied_beside_the_running_ones():
    """Slots 0-2 run; the prefix sits in slot 7: taking slot 7 would make every step 8 slots wide
    (4 of them throwaway rows), so slot 3 takes a copy and slot 7 keeps its entry."""
    cache = cache_with({7: (PROMPT, 1)})
    plan = cache.plan(PROMPT, 1, free=[3, 4, 5, 6, 7], busy=[0, 1, 2])
    assert (plan.slot, plan.copy_from, plan.keep) == (3, 7, len(PROMPT) - 1)
    assert cache.resident[7] is not None and cache.resident[3] is None


def test_a_prefix_beside_the_running_ones_is_taken_where_it_is():
    cache = cache_with({3: (PROMPT, 1), 7: (PROMPT, 1)})
    plan = cache.plan(PROMPT, 1, free=[3, 4, 5, 6, 7], busy=[0, 1, 2])
    assert (plan.slot, plan.copy_from) == (3, None)


def test_nothing_running_takes_the_prefix_where_it_is():
    cache = cache_with({7: (PROMPT, 1)})
    assert cache.plan(PROMPT, 1, free=list(range(8))).slot == 7


def test_a_miss_takes_a_slot_beside_the_running_ones_and_saves_what_it_overwrites():
    cache = cache_with({3: (PROMPT, 2)})
    plan = cache.plan([1, 2, 3] * 20, 1, free=[3, 4, 5, 6, 7], busy=[0, 1, 2])
    assert plan.slot == 3 and plan.keep == 0 and plan.save is not None and plan.save.adapter == 2


def test_a_prefix_held_by_a_running_request_is_copied_from_its_slot():
    """Requests that arrive together with one preamble: the second finds it in the first one's slot
    while the first still runs (its KV also holds the answer so far, trimmed away by ``keep``)."""
    cache = cache_with({})
    live = {0: Entry(PROMPT + [7, 8, 9], 1)}
    plan = cache.plan(PROMPT, 1, free=[1, 2, 3], busy=[0], live=live)
    assert (plan.slot, plan.copy_from, plan.keep) == (1, 0, len(PROMPT) - 1)
    assert cache.plan(PROMPT, 2, free=[2, 3], busy=[0], live=live).keep == 0  # computed under another adapter
    assert cache.plan(PROMPT[:20] + [1] * 40, 1, free=[2, 3], busy=[0], live=live).keep == 0  # too short to copy


def test_a_longer_resident_prefix_beats_a_running_one():
    cache = cache_with({5: (PROMPT, 1)})
    plan = cache.plan(PROMPT, 1, free=[1, 5], busy=[0], live={0: Entry(PROMPT[:40], 1)})
    assert plan.keep == len(PROMPT) - 1 and plan.copy_from in (None, 5)
