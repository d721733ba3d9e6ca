"""The prompt prefix cache: KV of earlier requests reused by the next request that starts the same way.

    appliance serve --model VERSION --parallel 4      (the cache is on; /metrics and usage report it)

Shared system prompts, RAG preambles and chat history repeat from request to request. The
scheduler's llama.cpp context keeps one KV stream per slot (non-unified cache), and this module
decides, when a request is admitted, which free slot it takes and how much of its prompt is
already there. Two tiers:

- resident: a slot whose request finished keeps its KV (prompt and answer) until another request
  needs the slot; a new request whose prompt shares a prefix with it takes that slot and prefills
  only the rest;
- live: a request admitted while another one with the same prefix runs gets a copy of the
  running slot's KV (``Plan.copy_from``; the copy is trimmed to the shared prefix);
- host: before a resident prefix is overwritten, its KV is copied out of llama.cpp
  (``llama_state_seq_get_data``) into a least-recently-used store bounded in bytes; a later
  request that matches it better than any resident slot gets it copied back
  (``llama_state_seq_set_data``) into the slot it takes.

Slots stay together: a decode step spans consecutive slots (scheduler.py ``_layout``), and every
idle slot inside that window decodes throwaway rows. When the slot holding a request's prefix
would widen the window past the busy slots while a free slot beside them would not, the prefix is
copied into that slot (``Plan.copy_from``, a few milliseconds) and stays resident where it was;
a miss takes the free slot that widens the window least. On the bench model, 4 clients rotating
over 3 adapters decoded 514 throwaway rows in 206 steps without this (147 tok/s in-process, 239 on
one model) and 12 with it (227-247 tok/s).

Reuse is exact: the KV bytes are the ones a fresh prefill of the same tokens computes, because
the scheduler runs llama.cpp in its batch-invariant configuration (scheduler.py). A prefix is
reused only under the adapter (llama.cpp handle) it was computed with, since LoRA changes K and
V; the prompt's last token is always computed again (its row gives the first answer token's
logits, in the scheduler's next decode step).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class Entry:
    """The tokens whose KV is held (positions 0..len-1) and the adapter it was computed under."""
    tokens: list[int]
    adapter: int | None
    data: bytes | None = None  # the host copy; None for a resident slot
    used: float = field(default_factory=time.monotonic)


@dataclass
class Plan:
    """Where an admitted request goes: its slot, the prefix kept there, what to copy in and out."""
    slot: int
    keep: int
    restore: Entry | None = None  # a host entry to copy into the slot first
    save: Entry | None = None     # the slot's resident entry, to copy out before it is overwritten
    copy_from: int | None = None  # a free slot whose resident KV is copied into the slot first


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """Bookkeeping only; the scheduler does the llama.cpp copies a :class:`Plan` asks for."""

    def __init__(self, slots: int, host_bytes: int, min_tokens: int = 32, enabled: bool = True) -> None:
        self.enabled = enabled  # off: every request prefills its whole prompt (a reference to compare with)
        self.resident: list[Entry | None] = [None] * slots
        self.host: OrderedDict[int, Entry] = OrderedDict()
        self.host_limit = host_bytes
        self.host_used = 0
        self.min_tokens = min_tokens  # shorter prefixes are not worth a copy to the host
        self.lookups = 0
        self.hits = 0
        self.cached_tokens = 0
        self._next_id = 0

    @staticmethod
    def usable(entry: Entry | None, prompt: list[int], adapter: int | None) -> int:
        """Prompt tokens ``entry`` can supply: its common prefix, leaving the last token to compute
        (its row gives the logits of the first answer token)."""
        if entry is None or entry.adapter != adapter:
            return 0
        return max(0, min(common_prefix(prompt, entry.tokens), len(prompt) - 1))

    def plan(self, prompt: list[int], adapter: int | None, free: list[int], busy: list[int] = (),
             live: dict[int, Entry] | None = None) -> Plan:
        """The slot among ``free`` for a request, and the prefix it keeps there; ``busy``: the
        slots of running requests, which the chosen slot should not be far from; ``live``: what
        those slots hold now (the tokens whose KV is there, and their adapter)."""
        self.lookups += 1
        best_slot, best, best_rank = None, 0, None
        for slot in free:
            n = self.usable(self.resident[slot], prompt, adapter)
            rank = (n, -_width(busy, slot) if busy else 0, self.resident[slot].used if n else 0)
            if n > 0 and (best_rank is None or rank > best_rank):
                best_slot, best, best_rank = slot, n, rank
        best_key, best_host = None, 0
        for key, entry in self.host.items():
            n = self.usable(entry, prompt, adapter)
            if n > best_host:
                best_key, best_host = key, n
        # a running request's slot: requests that arrive together with one system prompt or RAG
        # preamble find it in the first one's slot while that one still runs
        best_live, live_slot = 0, None
        for slot, entry in (live or {}).items():
            n = self.usable(entry, prompt, adapter)
            if n > best_live:
                live_slot, best_live = slot, n
        if live_slot is not None and best_live > max(best, best_host) and best_live >= self.min_tokens:
            slot = self._compact(free, busy)
            plan = Plan(slot, best_live, copy_from=live_slot, save=self._worth_saving(slot))
        elif best_key is not None and best_host > best and best_host >= self.min_tokens:
            slot = self._compact(free, busy) if busy else self._victim(free)
            entry = self.host[best_key]
            self.host.move_to_end(best_key)
            entry.used = time.monotonic()
            plan = Plan(slot, best_host, restore=entry, save=self._worth_saving(slot))
        elif best_slot is not None:
            plan = Plan(best_slot, best)
            compact = self._compact(free, busy)
            if busy and _width(busy, best_slot) > _width(busy, compact):
                plan = Plan(compact, best, copy_from=best_slot, save=self._worth_saving(compact))
        else:
            slot = self._compact(free, busy) if busy else self._victim(free)
            plan = Plan(slot, 0, save=self._worth_saving(slot))
        if plan.keep:
            self.hits += 1
            self.cached_tokens += plan.keep
        self.resident[plan.slot] = None  # the slot is the request's now (a copy_from slot keeps its entry)
        return plan

    def _compact(self, free: list[int], busy: list[int]) -> int:
        """The free slot that widens the busy slots' window least (empty, then least recently used)."""
        return min(free, key=lambda s: (_width(busy, s), self.resident[s] is not None,
                                        self.resident[s].used if self.resident[s] else 0, s))

    def _victim(self, free: list[int]) -> int:
        """An empty free slot (lowest first: running slots stay adjacent, one llama.cpp ubatch),
        else the least recently used resident one."""
        empty = [s for s in free if self.resident[s] is None]
        if empty:
            return min(empty)
        return min(free, key=lambda s: self.resident[s].used)

    def _worth_saving(self, slot: int) -> Entry | None:
        entry = self.resident[slot]
        if entry is None or self.host_limit <= 0 or len(entry.tokens) < self.min_tokens:
            return None
        for other in self.host.values():  # already held by a longer (or equal) host entry
            if other.adapter == entry.adapter and common_prefix(entry.tokens, other.tokens) == len(entry.tokens):
                other.used = time.monotonic()
                return None
        return entry

    def keep_resident(self, slot: int, tokens: list[int], adapter: int | None) -> None:
        """A finished request's KV stays in its slot."""
        self.resident[slot] = Entry(list(tokens), adapter) if tokens and self.enabled else None

    def drop_resident(self, slot: int) -> None:
        self.resident[slot] = None

    def store(self, entry: Entry, data: bytes) -> None:
        """Keep ``entry``'s KV copy on the host, evicting the least recently used entries to fit."""
        size = len(data)
        if size > self.host_limit:
            return
        for key in [k for k, e in self.host.items()  # a shorter prefix of the same tokens is redundant now
                    if e.adapter == entry.adapter and common_prefix(e.tokens, entry.tokens) == len(e.tokens)]:
            self._evict(key)
        while self.host and self.host_used + size > self.host_limit:
            self._evict(next(iter(self.host)))
        self.host[self._next_id] = Entry(entry.tokens, entry.adapter, data)
        self._next_id += 1
        self.host_used += size

    def forget_adapter(self, adapter: int) -> None:
        """An unloaded adapter's prefixes can never match again."""
        for slot, entry in enumerate(self.resident):
            if entry is not None and entry.adapter == adapter:
                self.resident[slot] = None
        for key in [k for k, e in self.host.items() if e.adapter == adapter]:
            self._evict(key)

    def _evict(self, key: int) -> None:
        entry = self.host.pop(key)
        self.host_used -= len(entry.data or b"")

    def stats(self) -> dict[str, int]:
        return {"lookups": self.lookups, "hits": self.hits, "cached_tokens": self.cached_tokens,
                "host_entries": len(self.host), "host_bytes": self.host_used, "host_limit_bytes": self.host_limit,
                "resident_slots": sum(e is not None for e in self.resident)}


def _width(busy: list[int], slot: int) -> int:
    """How many consecutive slots a decode step spans with ``slot`` busy too."""
    slots = [*busy, slot]
    return max(slots) - min(slots) + 1
