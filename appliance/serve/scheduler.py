"""Continuous batching over one llama.cpp context, with LoRA adapters chosen per sequence.

    appliance serve --model VERSION --parallel 4 --adapter legal=ADAPTER.gguf

One thread owns the llama.cpp context. Requests wait in a FIFO queue; up to ``slots`` of them
run at once, each in its own sequence id (its own stream of a non-unified KV cache). Each step
prefills the next chunk of one admitted prompt, then decodes one token for every running sequence
(more when its drafted tokens hold, see below) in one ``llama_decode``, whatever adapter each one
uses; a prompt's last token is decoded in that step like a generated one. Upstream llama.cpp applies LoRA adapters per context (``build_lora_mm`` adds every adapter set on the context to every row);
the appliance's build patches it (scripts/patch_llama_cpp.py) so that each adapter's delta
reaches only the rows of the sequences routed to it. On a llama.cpp without the patch the
scheduler falls back to adapter groups: the groups with running sequences take turns (round
robin), one decode step each. Each sequence keeps its own sampler chain (grammar, penalties,
top-p, temperature, seed), its own stop strings and an exact ``max_tokens``. A finished
request's KV stays in its slot for the next request with the same prefix (prefix_cache.py).

Batch invariance: a greedy answer is the same token for token whether its request runs alone or
beside others, and whether its prompt prefix came from the cache or was prefilled. On this
llama.cpp build (0.3.36, CPU) these made a row's logits depend on its batch, each reproduced by
``bench/batch_invariance.py`` (one row's logits, Gemma 3 270M Q4_K_M; figures in bench/README.md):
- repacked weights (CPU_REPACK, ``use_extra_bufts``; on x86 Q4_0, Q4_K, Q8_0, IQ4_NL and, with
  AVX-512, Q2_K): rows go through a 4-row gemm for the first rows of a ubatch and a 1-row gemv
  for the last ``n % 4``, which round differently. Every ubatch here has a multiple of ALIGN = 4
  rows, so every row takes the gemm (repacking stays on: an 8-row decode step took 23.5 ms with it, 32.1 without). A prompt chunk
  is rounded up with throwaway rows after its end (causal: no prompt row sees them); a decode
  step spans consecutive slots with the same number of rows each (``_layout``), throwaway rows
  in slots without a generating sequence, and drafted tokens in the extra rows of a generating
  one (``_draft``): a lone stream decodes 4 rows a step, its last token and 3 tokens guessed by
  prompt lookup, kept only while they equal what its sampler picks (speculative decoding that
  cannot change the answer);
- the tiled K-quant matmul (ggml-cpu/tiled/tiled.cpp) takes only batches of 8 rows or more,
  smaller ones go to vec_dot, and the two round differently: ``GGML_CPU_TILED_MM=0`` keeps every
  row count on vec_dot (set below, before llama.cpp's first matmul reads it; forcing the tiled
  kernel for every row count is invariant too, but made a one-row decode step 5-8x slower);
- a prompt row prefilled alone differs from the same row prefilled among others (0.74 logits on
  Gemma without repacking; two rows or more agree with any larger batch): the 4-row rounding
  above covers it;
- flash attention on the CPU has three paths (ggml-cpu/ops.cpp): a ubatch of one sequence with
  one query row splits its KV across threads once the KV holds 512 cells (``use_split_kv_path``),
  64 query rows or more of a sequence take a tiled kernel, the rest go one row at a time over the
  KV in order. The appliance's llama.cpp patch switches the context to ggml's reference kernels
  (``llama_set_cpu_reference_kernels``): only the row-wise path runs, and flash attention stays
  on (plain attention made an 8-row decode step 1.3x slower). On a llama.cpp without the patch
  flash attention is off;
- a ``llama_decode`` mixing several prompts (and decode rows): 6 of 8 Gemma answers at 8 clients
  departed from solo; each step now decodes the generating rows in one call and one prompt's
  next chunk in another.
- a LoRA adapter's F32 matmuls take vec_dot for one row and llamafile's sgemm for two or more
  (which agreed bit for bit on the models' Q5_0/Q8_0 rows, not on F32): covered by the 4-row
  rounding too.

Across adapters: with routing the patch stacks every adapter set on the context per weight and
applies each row's own adapter with ``ggml_mul_mat_id`` (expert 0 is zeros, for rows of the base
model), whose CPU kernel computes every output element with one ``vec_dot``, whatever the other
rows: invariant by construction. The stack's rank is the largest of the adapters set, and padding
a rank changes the rounding of B's reduction, so the scheduler sets every loaded adapter whenever
any routed row runs (``_routed_adapters``): a row's bits depend on which adapters are loaded (they
may change at a hot add or removal), never on which requests run beside it. They differ from an
adapter applied alone without routing (the scale is folded into B) by rounding only.
"""
from __future__ import annotations

import codecs
import ctypes
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from appliance.serve.logprobs import TokenLogprob, logprobs_at
from appliance.serve.prefix_cache import Entry, PrefixCache
from appliance.serve.sampling import build_sampler

# ggml reads this once per process, at its first matmul: set before any llama.cpp context computes
os.environ.setdefault("GGML_CPU_TILED_MM", "0")
DEFAULT_PREFIX_CACHE_MIB = 256
IDLE_ADAPTER_STEPS = 16
"""Steps the adapters stay set on the context after the last routed row (``_routed_adapters``)."""
ALIGN = 4
"""Every ubatch has a multiple of this many rows: the repacked matmuls take 4 rows at a time (module doc)."""


class PromptTooLong(ValueError):
    """The prompt does not fit the per-sequence context."""


class UnknownModel(LookupError):
    """The request names a model or adapter this engine does not serve."""


@dataclass
class SamplingParams:
    max_tokens: int | None = 256
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    json_schema: dict | None = None  # constrain the output to JSON matching this schema
    grammar: str | None = None  # a GBNF grammar (tool calls); takes precedence over json_schema
    logit_bias: dict[int, float] | None = None  # token id -> bias added to its logit
    logprobs: int | None = None  # report each token's logprob and this many alternatives (None: none)
    special_tokens: bool = False  # write control tokens' text (tool-call markers such as [TOOL_CALLS])


@dataclass
class Delta:
    text: str
    logprobs: list[TokenLogprob] | None = None  # the tokens this text completes (when asked for)


@dataclass
class Finished:
    reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float]
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


@dataclass
class Failed:
    error: BaseException


@dataclass
class Sequence:
    """One request in flight: its prompt, sampler and what it has produced so far."""
    prompt: list[int]
    params: SamplingParams
    adapter: str | None
    events: queue.Queue[Delta | Finished | Failed] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    slot: int = -1
    n_prefilled: int = 0
    cached: int = 0       # prompt tokens taken from the prefix cache
    n_past: int = 0       # tokens whose KV is in the slot (positions 0..n_past-1)
    generated: list[int] = field(default_factory=list)
    held: str = ""
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    sampler: Any = None
    pointer: Any = None  # the adapter's llama.cpp handle, fixed at submit time
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="ignore"))
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet sent with a Delta

    @property
    def prefilling(self) -> bool:
        """Prompt tokens before the last one still lack KV. The last prompt token is decoded like a
        generated one, in a decode step (its row gives the first answer token's logits)."""
        return self.n_prefilled < len(self.prompt) - 1

    @property
    def last_token(self) -> int:
        """The token whose row the next decode step computes (the prompt's last, then the latest answer token)."""
        return self.generated[-1] if self.generated else self.prompt[-1]


class Scheduler:
    """Owns the llama.cpp context; ``submit`` hands it a sequence, events come back on its queue."""

    def __init__(self, model, n_ctx_per_seq: int, slots: int, n_threads: int, n_batch: int = 512,
                 prefix_cache_bytes: int | None = DEFAULT_PREFIX_CACHE_MIB << 20,
                 adapter_routing: bool = True) -> None:
        """``adapter_routing``: decode sequences of different adapters in one step when llama.cpp
        has the routing patch (``False``: one step per adapter group, as on an unpatched build)."""
        import llama_cpp
        from llama_cpp import _internals

        self._llama_cpp = llama_cpp
        self._internals = _internals
        self.model = model
        self.slots = slots
        self.n_ctx = n_ctx_per_seq
        self.n_batch = n_batch
        params = llama_cpp.llama_context_default_params()
        # one stream more than the slots: a scratch sequence for throwaway rows (``_layout``), and
        # ALIGN cells more per stream for the rows after a sequence's last (drafts, throwaway rows)
        params.n_ctx = (n_ctx_per_seq + ALIGN) * (slots + 1)
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = slots + 1
        params.kv_unified = False  # each sequence its own KV stream: attention never mixes rows across sequences
        self._patch = llama_patch(llama_cpp)
        # flash attention only where its row-wise path can be forced (module doc)
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if self._patch is not None
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.swa_full = True  # sliding-window layers keep every position: prefixes stay reusable, cells stay in order
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        self.ctx = _internals.LlamaContext(model=model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self.n_vocab = model.n_vocab()
        self._piece_buffer = ctypes.create_string_buffer(64)
        self._adapters: dict[str, Any] = {}  # name -> llama_adapter_lora pointer
        self._current_adapters: tuple[int, ...] = ()  # the addresses of the adapters set on the context
        self._last_adapter_step = -IDLE_ADAPTER_STEPS - 1  # the last step with a row routed to an adapter
        self._routing = self._patch if adapter_routing else None
        if self._patch is not None:
            self._patch.reference_kernels(self.ctx.ctx, True)
        if self._routing is not None:
            self._routing.enable(self.ctx.ctx, True)
        self._pending: list[Sequence] = []
        self._running: list[Sequence] = []
        self._free_slots = list(range(slots))
        # None: no prefix cache at all; 0: only the slots' own (no host copies)
        self.cache = PrefixCache(slots, prefix_cache_bytes or 0, enabled=prefix_cache_bytes is not None)
        self._group_turn = 0
        self._cv = threading.Condition()
        self._stopping = False
        self.steps = 0
        self.adapter_switches = 0
        self.switch_seconds = 0.0
        self.mixed_steps = 0  # decode steps whose rows used more than one adapter (or base and adapter)
        self.draft_tokens = 0  # tokens drafted into decode steps (``_draft``)
        self.throwaway_rows = 0  # decode rows in slots without a generating sequence (``_layout``)
        self.accepted_drafts = 0  # of which the sampler picked the same token
        self._thread = threading.Thread(target=self._loop, name="llama-scheduler", daemon=True)
        self._thread.start()

    # -- adapters ---------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str) -> None:
        pointer = self._llama_cpp.llama_adapter_lora_init(self.model.model, path.encode("utf-8"))
        if not pointer:
            raise ValueError(f"llama.cpp could not load LoRA adapter {path} for this base model "
                             "(wrong base architecture or shapes?)")
        with self._cv:
            self._adapters[name] = pointer

    def unload_adapter(self, name: str) -> None:
        """Stop serving ``name``; sequences already running with it finish first. The adapter's
        memory is released with the model (llama.cpp frees adapters with their model)."""
        with self._cv:
            if name not in self._adapters:
                raise UnknownModel(f"no adapter named {name!r}")
            self.cache.forget_adapter(_address(self._adapters.pop(name)))

    def adapter_names(self) -> list[str]:
        with self._cv:
            return sorted(self._adapters)

    @property
    def routes_adapters(self) -> bool:
        """True when sequences of different adapters share a decode step (patched llama.cpp)."""
        return self._routing is not None

    # -- requests ---------------------------------------------------------------------------
    def submit(self, seq: Sequence) -> Sequence:
        if len(seq.prompt) >= self.n_ctx:
            raise PromptTooLong(f"the prompt has {len(seq.prompt)} tokens; this server's context holds "
                                f"{self.n_ctx} per request, including the answer")
        with self._cv:
            if self._stopping:
                raise RuntimeError("the engine is shutting down")
            if seq.adapter is not None:
                if seq.adapter not in self._adapters:
                    raise UnknownModel(f"no adapter named {seq.adapter!r}")
                seq.pointer = self._adapters[seq.adapter]
        # built here, in the caller's thread: a schema llama.cpp cannot compile fails this request
        # with a clear error (SamplerError) instead of the scheduler thread
        seq.sampler = self._sampler(seq.params)
        with self._cv:
            if self._stopping:
                seq.sampler.close()
                raise RuntimeError("the engine is shutting down")
            self._pending.append(seq)
            self._cv.notify()
        return seq

    def load(self) -> dict[str, int]:
        with self._cv:
            return {"running": len(self._running), "waiting": len(self._pending), "slots": self.slots}

    def cache_stats(self) -> dict[str, int]:
        """The prefix cache's counters (lookups, hits, cached tokens, host entries and bytes)."""
        with self._cv:
            return self.cache.stats()

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)
        for seq in self._pending + self._running:
            seq.events.put(Failed(RuntimeError("the engine shut down")))
        self.batch.close()
        self.ctx.close()

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._pending and not self._running:
                    self._cv.wait()
                if self._stopping:
                    return
                self._admit()
            self._drop_cancelled()
            if self._running:
                try:
                    self._step()
                except Exception as exc:  # a failed decode fails the sequences it carried, not the server
                    for seq in list(self._running):
                        self._finish(seq, failure=exc)

    def _admit(self) -> None:
        while self._free_slots and self._pending:
            seq = self._pending.pop(0)
            if seq.cancelled.is_set():
                seq.sampler.close()
                continue
            key = _address(seq.pointer)
            live = {s.slot: Entry((s.prompt + s.generated)[:s.n_past], _address(s.pointer)) for s in self._running}
            plan = self.cache.plan(seq.prompt, key, self._free_slots, list(live), live)
            self._free_slots.remove(plan.slot)
            memory = self.ctx.memory
            if plan.save is not None:
                self._save(plan.slot, plan.save)
            keep = plan.keep
            if plan.restore is not None and not self._restore(plan.slot, plan.restore):
                keep = 0
            if plan.copy_from is not None and not self._copy(plan.copy_from, plan.slot):
                keep = 0
            self._llama_cpp.llama_memory_seq_rm(memory, plan.slot, keep, -1)
            seq.slot, seq.n_prefilled, seq.cached, seq.n_past = plan.slot, keep, keep, keep
            if self._routing is not None:
                self._routing.route(self.ctx.ctx, seq.slot, seq.pointer)
            self._running.append(seq)

    def _save(self, slot: int, entry) -> None:
        """Copy a slot's KV out to the host tier before the slot is overwritten."""
        size = self._llama_cpp.llama_state_seq_get_size(self.ctx.ctx, slot)
        if not size or size > self.cache.host_limit:
            return
        buffer = (ctypes.c_uint8 * size)()
        written = self._llama_cpp.llama_state_seq_get_data(self.ctx.ctx, buffer, size, slot)
        if written:
            self.cache.store(entry, bytes(buffer)[:written])

    def _copy(self, source: int, slot: int) -> bool:
        """Copy ``source``'s KV into ``slot``: a free slot's resident prefix (the prefix cache keeps
        running slots together) or a running request's (a prefix shared by requests that arrive together)."""
        size = self._llama_cpp.llama_state_seq_get_size(self.ctx.ctx, source)
        buffer = (ctypes.c_uint8 * size)()
        written = self._llama_cpp.llama_state_seq_get_data(self.ctx.ctx, buffer, size, source) if size else 0
        self._llama_cpp.llama_memory_seq_rm(self.ctx.memory, slot, -1, -1)
        if written and self._llama_cpp.llama_state_seq_set_data(self.ctx.ctx, buffer, written, slot):
            return True
        self._llama_cpp.llama_memory_seq_rm(self.ctx.memory, slot, -1, -1)
        return False

    def _restore(self, slot: int, entry) -> bool:
        data = entry.data
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        self._llama_cpp.llama_memory_seq_rm(self.ctx.memory, slot, -1, -1)
        if self._llama_cpp.llama_state_seq_set_data(self.ctx.ctx, buffer, len(data), slot):
            return True
        self._llama_cpp.llama_memory_seq_rm(self.ctx.memory, slot, -1, -1)
        return False

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._running if s.cancelled.is_set()]:
            self._finish(seq, reason="cancelled")

    def _groups(self) -> list[str | None]:
        order: list[str | None] = []
        for seq in self._running:
            if seq.adapter not in order:
                order.append(seq.adapter)
        return order

    def _step(self) -> None:
        if not self._running:
            return
        if self._routing is not None:
            members = self._running
            self._use_adapters(self._routed_adapters(members))
        else:
            groups = self._groups()
            group = groups[self._group_turn % len(groups)]
            self._group_turn += 1
            members = [s for s in self._running if s.adapter == group]
            self._use_adapters([members[0].pointer])

        # one llama_decode for a single prompt's next chunk, then one for the generating rows: a
        # batch never mixes prompts with each other or with decode rows, the regime
        # bench/batch_invariance.py measured row for row. A prompt's last token waits for the decode
        # step (``Sequence.prefilling``): a request whose prefix is cached skips the chunk, and its
        # first token costs a row of a step the others run anyway instead of a llama_decode of its own.
        prefilling = next((s for s in members if s.prefilling and not s.cancelled.is_set()), None)
        if prefilling is not None:
            self._prefill_chunk(prefilling)
        decoding = sorted((s for s in members if not s.prefilling), key=lambda s: s.slot)
        if decoding:
            self.mixed_steps += len({_address(s.pointer) for s in decoding}) > 1
            self._decode_step(decoding)

    def _prefill_chunk(self, seq: Sequence) -> None:
        """The KV of the next chunk of ``seq``'s prompt, up to (not including) its last token; no logits."""
        start = seq.n_prefilled
        stop = min(len(seq.prompt) - 1, start + self.n_batch)
        rows = [(seq.prompt[i], i, seq.slot, False) for i in range(start, stop)]
        # throwaway rows after the chunk (causal: no prompt row sees them) round it up to ALIGN rows
        rows += [(seq.prompt[start], stop + i, seq.slot, False) for i in range(-len(rows) % ALIGN)]
        try:
            self._decode(rows, [seq])
        finally:
            self._llama_cpp.llama_memory_seq_rm(self.ctx.memory, seq.slot, stop, -1)
        seq.n_prefilled = seq.n_past = stop

    def _decode_step(self, decoding: list[Sequence]) -> None:
        """One llama_decode giving every generating sequence its next token (and more when its drafts hold).

        The step is laid out as one ubatch of a multiple of ALIGN rows (``_layout``): consecutive
        slots, the same number of rows in each. A generating sequence's first row is its last
        token; its other rows are drafted tokens (``_draft``) that are kept only while they equal
        what its sampler picks from the row before, so the answer is the one decoded token by
        token. A slot without a generating sequence gets throwaway rows after its KV, removed
        after the step."""
        by_slot = {s.slot: s for s in decoding}
        window, per_slot = self._layout(sorted(by_slot))
        rows, first_row, drafts, throwaway = [], {}, {}, []
        filler = decoding[0].last_token
        for slot in window:
            seq = by_slot.get(slot)
            first_row[slot] = len(rows)
            if seq is None:
                start, tokens = self._end(slot), [filler] * per_slot
                throwaway.append((slot, start))
            else:
                start = len(seq.prompt) + len(seq.generated) - 1
                drafts[slot] = self._draft(seq, per_slot - 1)
                tokens = [seq.last_token] + drafts[slot]
            rows += [(token, start + k, slot, True) for k, token in enumerate(tokens)]
        try:
            self._decode(rows, decoding)
        finally:
            for slot, start in throwaway:
                self._llama_cpp.llama_memory_seq_rm(self.ctx.memory, slot, start, -1)
        self.draft_tokens += sum(len(d) for d in drafts.values())
        self.throwaway_rows += per_slot * len(throwaway)
        for seq in decoding:
            seq.n_past = len(seq.prompt) + len(seq.generated)
            seq.n_prefilled = len(seq.prompt)
            draft = drafts[seq.slot]
            for k in range(per_slot):
                self._sample(seq, first_row[seq.slot] + k)
                if seq.sampler is None or k == len(draft) or seq.generated[-1] != draft[k]:
                    break  # finished, out of rows, or the draft departed from the sampled token
                seq.n_past += 1  # the drafted row k+1 read exactly the token just sampled
                self.accepted_drafts += 1
            if seq.sampler is not None and draft:
                self._llama_cpp.llama_memory_seq_rm(self.ctx.memory, seq.slot, seq.n_past, -1)

    def _layout(self, slots: list[int]) -> tuple[list[int], int]:
        """The consecutive slots and rows per slot of a decode step covering ``slots``: the fewest
        rows that make a multiple of ALIGN (on a tie, more rows per slot: room for drafts).

        llama.cpp puts only consecutive sequence ids, with equal token counts, in one ubatch."""
        low, high = slots[0], slots[-1]
        best: tuple[int, list[int], int] | None = None
        for per_slot in (4, 2, 1):
            width = high - low + 1
            while width * per_slot % ALIGN:
                width += 1
            if width > self.slots + 1:
                continue
            start = min(low, self.slots + 1 - width)
            if best is None or width * per_slot < best[0]:
                best = (width * per_slot, list(range(start, start + width)), per_slot)
        assert best is not None  # 4 rows per slot always fit
        return best[1], best[2]

    @staticmethod
    def _draft(seq: Sequence, n: int) -> list[int]:
        """``n`` tokens guessed to follow ``seq``'s text: what followed the latest earlier occurrence
        of its last few tokens (prompt lookup), else its last token repeated."""
        if n <= 0:
            return []
        tokens = seq.prompt + seq.generated
        for size in (3, 2, 1):
            if len(tokens) <= size:
                continue
            tail = tokens[-size:]
            for i in range(len(tokens) - size - 1, -1, -1):
                if tokens[i] == tail[0] and tokens[i:i + size] == tail:  # no slice for most positions
                    guess = tokens[i + size:i + size + n]
                    return guess + [guess[-1]] * (n - len(guess))
        return [tokens[-1]] * n

    def _end(self, slot: int) -> int:
        """The position after the last token whose KV ``slot`` holds."""
        return self._llama_cpp.llama_memory_seq_pos_max(self.ctx.memory, slot) + 1

    def _decode(self, rows: list[tuple[int, int, int, bool]], seqs: list[Sequence]) -> None:
        """One llama_decode of (token, position, slot, wants logits) rows."""
        batch = self.batch.batch
        for n, (token, pos, slot, logits) in enumerate(rows):
            batch.token[n] = token
            batch.pos[n] = pos
            batch.seq_id[n][0] = slot
            batch.n_seq_id[n] = 1
            batch.logits[n] = logits
        batch.n_tokens = len(rows)
        code = self._llama_cpp.llama_decode(self.ctx.ctx, batch)
        if code != 0:
            for seq in seqs:  # what llama.cpp kept of this step is unknown: no slot of it is reused
                seq.n_past = 0
            raise RuntimeError(f"llama_decode failed with code {code}")
        self.steps += 1

    def _sample(self, seq: Sequence, index: int) -> None:
        """Sample ``seq``'s next token from output row ``index`` (with its logprobs when asked) and advance."""
        token = seq.sampler.sample(self.ctx, index)
        if seq.params.logprobs is not None and not self._llama_cpp.llama_vocab_is_eog(self.model.vocab, token):
            logprob, top = logprobs_at(self.ctx.ctx, index, self.n_vocab, token, seq.params.logprobs)
            seq.logprobs.append(TokenLogprob(self._piece(token), logprob, [(self._piece(t), p) for t, p in top]))
        self._advance(seq, token)

    def _routed_adapters(self, members: list[Sequence]) -> list[Any]:
        """The adapters to set for a routed step: every loaded one (and any a running sequence
        still uses after its removal) while a row was routed to an adapter within the last
        IDLE_ADAPTER_STEPS steps, else none.

        Always the whole set, so that the patch's stack (module doc) keeps one rank and a row's
        bits never depend on the other requests. Another set makes llama.cpp restack and reserve
        its compute graph (about 17 ms on the bench model), hence the idle steps before the set is
        dropped for base-only traffic; base rows get + 0 from the stack's zero expert, so dropping
        it changes no answer."""
        running = [seq.pointer for seq in members if seq.pointer is not None]
        if running:
            self._last_adapter_step = self.steps
        if self.steps - self._last_adapter_step > IDLE_ADAPTER_STEPS:
            return []
        return list(self._adapters.values()) + running

    def _use_adapters(self, pointers: list[Any]) -> None:
        """Set these adapters (None: the base model) on the context, unless they are set already.

        By handle, not name: an adapter removed and added again under its name is another adapter.
        A change makes llama.cpp rebuild its graph at the next decode."""
        handles = {_address(p): p for p in pointers if p is not None}
        wanted = tuple(sorted(handles))
        if wanted == self._current_adapters:
            return
        started = time.perf_counter()
        if not wanted:
            self._llama_cpp.llama_set_adapters_lora(self.ctx.ctx, None, 0, None)
        else:
            array = (self._llama_cpp.llama_adapter_lora_p_ctypes * len(wanted))(*(handles[a] for a in wanted))
            scales = (ctypes.c_float * len(wanted))(*([1.0] * len(wanted)))
            self._llama_cpp.llama_set_adapters_lora(self.ctx.ctx, array, len(wanted), scales)
        self._current_adapters = wanted
        self.adapter_switches += 1
        self.switch_seconds += time.perf_counter() - started

    def _sampler(self, params: SamplingParams):
        return build_sampler(self.model, self.n_vocab, params,
                             params.seed if params.seed is not None else random.getrandbits(32))

    def _advance(self, seq: Sequence, token: int) -> None:
        now = time.perf_counter()
        if seq.first_token is None:
            seq.first_token = now
        if self._llama_cpp.llama_vocab_is_eog(self.model.vocab, token):
            self._finish(seq, reason="stop")
            return
        seq.generated.append(token)
        seq.held += seq.decoder.decode(self._piece(token, seq.params.special_tokens))
        stops = seq.params.stop or []
        hit = min((i for i in (seq.held.find(s) for s in stops if s) if i >= 0), default=-1)
        if hit >= 0:
            seq.held = seq.held[:hit]
            self._finish(seq, reason="stop")
            return
        keep = _partial_stop_suffix(seq.held, stops)
        if len(seq.held) > keep:
            seq.events.put(Delta(seq.held[: len(seq.held) - keep], self._take_logprobs(seq)))
            seq.held = seq.held[len(seq.held) - keep:]
        limit = seq.params.max_tokens
        if (limit is not None and len(seq.generated) >= limit) or len(seq.prompt) + len(seq.generated) >= self.n_ctx:
            self._finish(seq, reason="length")

    @staticmethod
    def _take_logprobs(seq: Sequence) -> list[TokenLogprob] | None:
        if seq.params.logprobs is None:
            return None
        taken, seq.logprobs = seq.logprobs, []
        return taken

    def _piece(self, token: int, special: bool = False) -> bytes:
        size = len(self._piece_buffer)
        n = self._llama_cpp.llama_token_to_piece(self.model.vocab, token, self._piece_buffer, size, 0, special)
        if n > size:  # a piece longer than the buffer: grow it once and retry
            self._piece_buffer = ctypes.create_string_buffer(n)
            n = self._llama_cpp.llama_token_to_piece(self.model.vocab, token, self._piece_buffer, n, 0, special)
        return self._piece_buffer.raw[:max(n, 0)]

    def _finish(self, seq: Sequence, reason: str = "stop", failure: BaseException | None = None) -> None:
        if seq in self._running:
            self._running.remove(seq)
            if failure is None and seq.n_past > 0 and self.cache.enabled:  # its KV stays for the next request
                kept = (seq.prompt + seq.generated)[:seq.n_past]
                self._llama_cpp.llama_memory_seq_rm(self.ctx.memory, seq.slot, seq.n_past, -1)
                self.cache.keep_resident(seq.slot, kept, _address(seq.pointer))
            else:
                self._llama_cpp.llama_memory_seq_rm(self.ctx.memory, seq.slot, -1, -1)
                self.cache.drop_resident(seq.slot)
            if self._routing is not None:
                self._routing.route(self.ctx.ctx, seq.slot, None)
            self._free_slots.append(seq.slot)
            self._free_slots.sort()
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        if failure is not None:
            seq.events.put(Failed(failure))
            return
        tail = seq.held + seq.decoder.decode(b"", final=True)
        if tail or seq.logprobs:
            seq.events.put(Delta(tail, self._take_logprobs(seq)))
        end = time.perf_counter()
        first = seq.first_token or end
        seq.events.put(Finished(
            reason=reason,
            prompt_tokens=len(seq.prompt),
            completion_tokens=len(seq.generated),
            cached_tokens=seq.cached,
            timings={"queue_and_prompt_s": round(first - seq.submitted, 6), "total_s": round(end - seq.submitted, 6)},
        ))


@dataclass(frozen=True)
class LlamaPatch:
    """The functions scripts/patch_llama_cpp.py adds to llama.cpp."""
    enable: Any             # llama_set_adapters_lora_routing(ctx, bool)
    route: Any              # llama_set_adapter_lora_seq(ctx, seq_id, adapter or NULL)
    reference_kernels: Any  # llama_set_cpu_reference_kernels(ctx, bool)


def llama_patch(llama_cpp) -> LlamaPatch | None:
    """The patched llama.cpp's functions, or None when the library lacks (this version of) the patch."""
    library = getattr(getattr(llama_cpp, "llama_cpp", None), "_lib", None)
    try:
        enable = library.llama_set_adapters_lora_routing
        route = library.llama_set_adapter_lora_seq
        reference_kernels = library.llama_set_cpu_reference_kernels
    except AttributeError:
        return None
    enable.argtypes, enable.restype = [ctypes.c_void_p, ctypes.c_bool], None
    route.argtypes, route.restype = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p], None
    reference_kernels.argtypes, reference_kernels.restype = [ctypes.c_void_p, ctypes.c_bool], None
    return LlamaPatch(enable, route, reference_kernels)


def _address(pointer: Any) -> int | None:
    """A llama.cpp handle as a number (None for no adapter)."""
    if pointer is None:
        return None
    return ctypes.cast(pointer, ctypes.c_void_p).value


def _partial_stop_suffix(text: str, stops: list[str]) -> int:
    """Length of the longest tail of ``text`` that could still grow into a stop string."""
    best = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[-length:]):
                best = length
                break
    return best
