"""Patch the vendored llama.cpp of the llama-cpp-python sdist: per-sequence LoRA routing.

    python scripts/patch_llama_cpp.py SDIST_DIR     (scripts/setup_env.sh runs it before compiling)

llama.cpp applies the LoRA adapters set on a context to every row of a batch
(``llm_graph_context::build_lora_mm``, src/llama-graph.cpp), so a server that gives each request
its own adapter must decode each adapter's sequences in a ``llama_decode`` of their own. This
patch adds two functions to llama.h:

    llama_set_adapters_lora_routing(ctx, enabled)
    llama_set_adapter_lora_seq(ctx, seq_id, adapter)      (adapter NULL: the base model)
    llama_set_cpu_reference_kernels(ctx, enabled)

With routing on, every adapter set by ``llama_set_adapters_lora`` applies only to the rows of the
sequences routed to it, so sequences of different adapters share one decode step. The adapters
set are stacked once per set (``llama_lora_stack_build``): per adapted weight one A [n_in, rank,
n_expert] and one B [rank, n_out, n_expert], expert 0 zeros (rows of no adapter), each adapter's
rank zero-padded to the largest and its scale folded into B. A weight's delta is then two
``ggml_mul_mat_id`` (the row's expert from a graph input filled from the ubatch's sequence ids)
and an add: three graph nodes whatever the number of adapters, where a 0/1 row mask per adapter
took five per adapter (a graph node costs its thread barrier: on the bench model 3 adapters made
an 8-row step 19% slower that way). The CPU kernel of ``ggml_mul_mat_id`` computes every output
element with one ``vec_dot``, so a row's result does not depend on the other rows. Adapters that
cannot be stacked (a 3-D or non-contiguous A/B, shapes differing between adapters) keep the
per-adapter masked delta.

The third switches the context's CPU backend to ggml's reference kernels
(``ggml_backend_cpu_set_use_ref``, which upstream exposes to backends but not through llama.h):
flash attention then always takes its row-by-row path (a lone query row would otherwise split its
KV across threads, and 64 rows or more take a tiled kernel, both rounding differently), and the
tiled matmul and op fusion are off: what the serving engine's batch invariance needs.

Given the sdist (not its llama.cpp folder), the script also edits the package's own CMakeLists.txt
(``SDIST_EDITS``): llama.cpp's common library is not compiled. The package forces it on, but nothing
in the wheel links it (only libllama and libggml* are installed); with ``-DLLAVA_BUILD=OFF`` (the
multimodal mtmd library, which nothing here imports) in setup_env.sh's CMAKE_ARGS that leaves 74 of
178 compile units (ggml and libllama).

Each edit names the text it expects; a sdist whose text differs stops the build with the file and
the edit, rather than compiling something else. Standard library only: a fresh machine has no
``patch``. Idempotent: a tree already patched is left as it is.
"""
from __future__ import annotations

import sys
from pathlib import Path

MARK = "SLM Appliance: per-sequence LoRA routing"

HEADER_API = """    // Set LoRa adapters on the context. Will only modify if the adapters currently in context are different.
    LLAMA_API int32_t llama_set_adapters_lora(
            struct llama_context * ctx,
            struct llama_adapter_lora ** adapters,
            size_t n_adapters,
            float * scales);
"""

EDITS: list[tuple[str, str, str]] = [
    ("include/llama.h", HEADER_API, HEADER_API + f"""
    // {MARK} (patch by the SLM Appliance, scripts/patch_llama_cpp.py).
    // With routing enabled, each adapter set with llama_set_adapters_lora applies only to the
    // tokens of the sequences routed to it; a sequence routed to NULL, or never routed, gets the
    // base model. Sequences that use different adapters can then share one llama_decode.
    LLAMA_API void llama_set_adapters_lora_routing(struct llama_context * ctx, bool enabled);
    LLAMA_API void llama_set_adapter_lora_seq(
            struct llama_context * ctx,
            llama_seq_id seq_id,
            struct llama_adapter_lora * adapter);

    // {MARK}: the CPU backend's reference kernels (ggml_backend_cpu_set_use_ref): flash attention
    // one query row at a time over the KV in order (no split KV for a lone row, no tiles), no tiled
    // matmul, no op fusion. A row's result then does not depend on what else is in its batch.
    LLAMA_API void llama_set_cpu_reference_kernels(struct llama_context * ctx, bool enabled);
"""),
    ("src/llama-adapter.h",
     "using llama_adapter_loras = std::unordered_map<llama_adapter_lora *, float>;\n",
     "using llama_adapter_loras = std::unordered_map<llama_adapter_lora *, float>;\n"
     f"// {MARK}: sequence -> the adapter its rows use\n"
     "using llama_lora_routes = std::unordered_map<llama_seq_id, const llama_adapter_lora *>;\n\n"
     f"// {MARK}: the adapters set on a routing context, stacked per weight for ggml_mul_mat_id.\n"
     "// Expert 0 is zeros (the rows of no adapter); expert e is one adapter, its rank zero-padded to the\n"
     "// largest and its scale multiplied into b. One stacked delta per weight, whatever the number of adapters.\n"
     "struct llama_lora_stack {\n"
     "    std::unordered_map<const llama_adapter_lora *, int32_t> expert;\n"
     "    std::unordered_map<std::string, llama_adapter_lora_weight> ab; // a [n_in, rank, n_expert], b [rank, n_out, n_expert]\n"
     "    std::vector<ggml_context_ptr> ctxs;\n"
     "    std::vector<ggml_backend_buffer_ptr> bufs;\n"
     "};\n"
     "using llama_lora_stack_ptr = std::unique_ptr<llama_lora_stack>;\n\n"
     "// nullptr when these adapters cannot be stacked (shapes or types): each then gets its own masked delta\n"
     "llama_lora_stack_ptr llama_lora_stack_build(const llama_adapter_loras & loras);\n"),
    ("src/llama-adapter.h",
     "        return ab_map.size() * 6u; // a, b, scale, add, 2 x mul_mat\n",
     "        return ab_map.size() * 8u; // a, b, scale, add, 2 x mul_mat, route mask mul + reshape\n"),
    ("src/llama-adapter.cpp",
     "ggml_tensor * llama_adapter_cvec::tensor_for(int il) const {\n",
     f"// {MARK}\n"
     "static bool lora_stack_read(const ggml_tensor * t, std::vector<float> & out) {\n"
     "    const int64_t n = ggml_nelements(t);\n"
     "    out.resize(n);\n"
     "    if (t->type == GGML_TYPE_F32) {\n"
     "        ggml_backend_tensor_get(t, out.data(), 0, n*sizeof(float));\n"
     "        return true;\n"
     "    }\n"
     "    const auto * traits = ggml_get_type_traits(t->type);\n"
     "    if (traits->to_float == nullptr) {\n"
     "        return false;\n"
     "    }\n"
     "    std::vector<uint8_t> raw(ggml_nbytes(t));\n"
     "    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());\n"
     "    traits->to_float(raw.data(), out.data(), n);\n"
     "    return true;\n"
     "}\n\n"
     "llama_lora_stack_ptr llama_lora_stack_build(const llama_adapter_loras & loras) {\n"
     "    struct shape { int64_t n_in; int64_t n_out; ggml_backend_buffer_type_t buft; };\n"
     "    std::map<std::string, shape> weights;\n"
     "    auto stack = std::make_unique<llama_lora_stack>();\n"
     "    int64_t rank = 0;\n"
     "    int32_t n_expert = 1;\n"
     "    bool all_f16 = true;\n"
     "    for (const auto & [adapter, scale] : loras) {\n"
     "        stack->expert[adapter] = n_expert++;\n"
     "        for (const auto & [name, w] : adapter->ab_map) {\n"
     "            const shape s = { w.a->ne[0], w.b->ne[1], ggml_backend_buffer_get_type(w.a->buffer) };\n"
     "            const auto [it, added] = weights.emplace(name, s);\n"
     "            if (it->second.n_in != s.n_in || it->second.n_out != s.n_out || it->second.buft != s.buft ||\n"
     "                w.a->ne[1] != w.b->ne[0] || ggml_n_dims(w.a) > 2 || ggml_n_dims(w.b) > 2 ||\n"
     "                !ggml_is_contiguous(w.a) || !ggml_is_contiguous(w.b)) {\n"
     "                return nullptr;\n"
     "            }\n"
     "            rank = w.a->ne[1] > rank ? w.a->ne[1] : rank;\n"
     "            all_f16 &= w.a->type == GGML_TYPE_F16 && w.b->type == GGML_TYPE_F16;\n"
     "        }\n"
     "    }\n"
     "    if (weights.empty()) {\n"
     "        return nullptr;\n"
     "    }\n"
     "    // F16 adapters stay F16 (half the memory, and ggml_mul_mat rounds the input to F16 for them anyway)\n"
     "    const ggml_type type = all_f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;\n"
     "    std::map<ggml_backend_buffer_type_t, ggml_context *> ctx_for;\n"
     "    for (const auto & [name, s] : weights) {\n"
     "        ggml_context * & ctx = ctx_for[s.buft];\n"
     "        if (ctx == nullptr) {\n"
     "            ggml_init_params params = { 2*weights.size()*ggml_tensor_overhead(), nullptr, true };\n"
     "            ctx = ggml_init(params);\n"
     "            stack->ctxs.emplace_back(ctx);\n"
     "        }\n"
     "        ggml_tensor * a = ggml_new_tensor_3d(ctx, type, s.n_in, rank, n_expert);\n"
     "        ggml_tensor * b = ggml_new_tensor_3d(ctx, type, rank, s.n_out, n_expert);\n"
     "        ggml_format_name(a, \"lora_stack.%s.a\", name.c_str());\n"
     "        ggml_format_name(b, \"lora_stack.%s.b\", name.c_str());\n"
     "        stack->ab[name] = llama_adapter_lora_weight(a, b);\n"
     "    }\n"
     "    for (auto & [buft, ctx] : ctx_for) {\n"
     "        ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft);\n"
     "        if (buf == nullptr) {\n"
     "            return nullptr;\n"
     "        }\n"
     "        ggml_backend_buffer_clear(buf, 0);\n"
     "        stack->bufs.emplace_back(buf);\n"
     "    }\n"
     "    std::vector<float> src;\n"
     "    std::vector<float> dst;\n"
     "    std::vector<uint8_t> packed;\n"
     "    auto put = [&](ggml_tensor * t, int64_t e, const std::vector<float> & values) {\n"
     "        const size_t size = ggml_row_size(t->type, values.size());\n"
     "        if (t->type == GGML_TYPE_F32) {\n"
     "            ggml_backend_tensor_set(t, values.data(), e*t->nb[2], size);\n"
     "            return;\n"
     "        }\n"
     "        packed.resize(size);\n"
     "        ggml_get_type_traits(t->type)->from_float_ref(values.data(), packed.data(), values.size());\n"
     "        ggml_backend_tensor_set(t, packed.data(), e*t->nb[2], size);\n"
     "    };\n"
     "    for (const auto & [adapter, scale] : loras) {\n"
     "        const int64_t e = stack->expert.at(adapter);\n"
     "        for (const auto & [name, w] : adapter->ab_map) {\n"
     "            const auto & st = stack->ab.at(name);\n"
     "            const int64_t r = w.a->ne[1];\n"
     "            const int64_t n_out = w.b->ne[1];\n"
     "            if (!lora_stack_read(w.a, src)) {\n"
     "                return nullptr;\n"
     "            }\n"
     "            put(st.a, e, src); // rows past r stay zero\n"
     "            if (!lora_stack_read(w.b, src)) {\n"
     "                return nullptr;\n"
     "            }\n"
     "            const float s = w.get_scale(adapter->alpha, scale);\n"
     "            dst.assign(rank*n_out, 0.0f);\n"
     "            for (int64_t o = 0; o < n_out; ++o) {\n"
     "                for (int64_t j = 0; j < r; ++j) {\n"
     "                    dst[o*rank + j] = src[o*r + j]*s;\n"
     "                }\n"
     "            }\n"
     "            put(st.b, e, dst);\n"
     "        }\n"
     "    }\n"
     "    return stack;\n"
     "}\n\n"
     "ggml_tensor * llama_adapter_cvec::tensor_for(int il) const {\n"),
    ("src/llama-context.h",
     "    bool adapters_lora_are_same(llama_adapter_lora ** adapters, size_t n_adapters, float * scales);\n",
     "    bool adapters_lora_are_same(llama_adapter_lora ** adapters, size_t n_adapters, float * scales);\n\n"
     f"    // {MARK}\n"
     "    void set_adapters_lora_routing(bool enabled);\n"
     "    void set_adapter_lora_seq(llama_seq_id seq_id, const llama_adapter_lora * adapter);\n"
     "    void set_cpu_reference_kernels(bool enabled);\n"
     "    void rebuild_lora_stack();\n"),
    ("src/llama-context.h",
     "    llama_adapter_loras_ptr loras;\n",
     "    llama_adapter_loras_ptr loras;\n\n"
     f"    // {MARK}\n"
     "    bool              lora_routing = false;\n"
     "    llama_lora_routes lora_routes;\n"
     "    llama_lora_stack_ptr lora_stack; // the adapters set, stacked (routing on, several adapters)\n"),
    ("src/llama-context.cpp",
     "bool llama_context::adapters_lora_are_same(",
     f"// {MARK}\n"
     "void llama_context::set_adapters_lora_routing(bool enabled) {\n"
     "    if (lora_routing != enabled) {\n"
     "        lora_routing = enabled;\n"
     "        rebuild_lora_stack();\n"
     "        sched_need_reserve = true;\n"
     "    }\n"
     "}\n\n"
     "void llama_context::rebuild_lora_stack() {\n"
     "    lora_stack.reset();\n"
     "    if (lora_routing && loras && !loras->empty()) {\n"
     "        lora_stack = llama_lora_stack_build(*loras);\n"
     "    }\n"
     "}\n\n"
     "void llama_context::set_adapter_lora_seq(llama_seq_id seq_id, const llama_adapter_lora * adapter) {\n"
     "    if (adapter == nullptr) {\n"
     "        lora_routes.erase(seq_id);\n"
     "    } else {\n"
     "        lora_routes[seq_id] = adapter;\n"
     "    }\n"
     "}\n\n"
     "void llama_context::set_cpu_reference_kernels(bool enabled) {\n"
     "    if (backend_cpu == nullptr) {\n"
     "        return;\n"
     "    }\n"
     "    auto * reg = ggml_backend_dev_backend_reg(ggml_backend_get_device(backend_cpu));\n"
     "    auto * set_use_ref = (decltype(ggml_backend_cpu_set_use_ref) *) ggml_backend_reg_get_proc_address(reg, \"ggml_backend_cpu_set_use_ref\");\n"
     "    if (set_use_ref) {\n"
     "        set_use_ref(backend_cpu, enabled);\n"
     "    }\n"
     "}\n\n"
     "bool llama_context::adapters_lora_are_same("),
    ("src/llama-context.cpp",
     "        /*.res         =*/ res,\n    };\n",
     "        /*.res         =*/ res,\n"
     f"        /*.lora_routes =*/ lora_routing ? &lora_routes : nullptr, // {MARK}\n"
     "        /*.lora_stack  =*/ lora_routing ? lora_stack.get() : nullptr,\n"
     "    };\n"),
    ("src/llama-context.cpp",
     "            loras->insert({adapters[i], scales[i]});\n        }\n    }\n\n    sched_need_reserve = true;\n}\n",
     "            loras->insert({adapters[i], scales[i]});\n        }\n    }\n\n"
     f"    rebuild_lora_stack(); // {MARK}\n"
     "    sched_need_reserve = true;\n}\n"),
    ("src/llama-context.cpp",
     "int32_t llama_set_adapter_cvec(\n",
     f"// {MARK}\n"
     "void llama_set_adapters_lora_routing(llama_context * ctx, bool enabled) {\n"
     "    ctx->set_adapters_lora_routing(enabled);\n"
     "}\n\n"
     "void llama_set_adapter_lora_seq(llama_context * ctx, llama_seq_id seq_id, llama_adapter_lora * adapter) {\n"
     "    ctx->set_adapter_lora_seq(seq_id, adapter);\n"
     "}\n\n"
     "void llama_set_cpu_reference_kernels(llama_context * ctx, bool enabled) {\n"
     "    ctx->set_cpu_reference_kernels(enabled);\n"
     "}\n\n"
     "int32_t llama_set_adapter_cvec(\n"),
    ("src/llama-graph.h",
     "class llm_graph_input_mean : public llm_graph_input_i {\n",
     f"// {MARK}: per adapter, 1.0 for the rows of the sequences routed to it, else 0.0\n"
     "class llm_graph_input_lora_route : public llm_graph_input_i {\n"
     "public:\n"
     "    llm_graph_input_lora_route(const llama_lora_routes * routes, const llama_lora_stack * stack, uint32_t n_outputs)\n"
     "        : routes(routes), stack(stack), n_outputs(n_outputs) {}\n"
     "    virtual ~llm_graph_input_lora_route() = default;\n\n"
     "    void set_input(const llama_ubatch * ubatch) override;\n\n"
     "    bool can_reuse(const llm_graph_params & params) override;\n\n"
     "    std::unordered_map<const llama_adapter_lora *, ggml_tensor *> rows; // F32 [1, n_tokens]\n"
     "    std::unordered_map<const llama_adapter_lora *, ggml_tensor *> outs; // F32 [1, n_outputs]\n"
     "    ggml_tensor * ids_rows = nullptr; // I32 [1, n_tokens]: each row's expert in the stack (0: no adapter)\n"
     "    ggml_tensor * ids_outs = nullptr; // I32 [1, n_outputs]\n\n"
     "    const llama_lora_routes * routes;\n"
     "    const llama_lora_stack  * stack;\n"
     "    const uint32_t n_outputs;\n"
     "};\n\n"
     "class llm_graph_input_mean : public llm_graph_input_i {\n"),
    ("src/llama-graph.h",
     "    llm_graph_result * res;\n\n    // return true if the \"other\" params",
     "    llm_graph_result * res;\n\n"
     f"    const llama_lora_routes * lora_routes = nullptr; // {MARK}\n"
     "    const llama_lora_stack  * lora_stack  = nullptr;\n\n"
     "    // return true if the \"other\" params"),
    ("src/llama-graph.h",
     "            loras == other.loras &&\n",
     "            loras == other.loras &&\n"
     "            lora_routes == other.lora_routes &&\n"
     "            lora_stack  == other.lora_stack  &&\n"),
    ("src/llama-graph.h",
     "    const llama_adapter_loras    * loras;\n    const llama_memory_context_i * mctx;\n    const llama_cross            * cross;\n\n    const llama_prec_policy * prec_policy;\n",
     "    const llama_adapter_loras    * loras;\n    const llama_memory_context_i * mctx;\n    const llama_cross            * cross;\n\n    const llama_prec_policy * prec_policy;\n\n"
     f"    // {MARK}\n"
     "    const llama_lora_routes * lora_routes;\n"
     "    const llama_lora_stack  * lora_stack;\n"
     "    mutable llm_graph_input_lora_route * inp_lora_route = nullptr;\n"),
    ("src/llama-graph.h",
     "    // do mat_mul_id, while optionally apply lora and per-expert scale\n",
     f"    // {MARK}: an adapter's delta times its row mask (row_dim: the dimension of ab that holds the rows)\n"
     "    ggml_tensor * build_lora_route(const llama_adapter_lora * adapter, ggml_tensor * ab, int row_dim) const;\n"
     "    llm_graph_input_lora_route * lora_route_input() const;\n"
     "    // res + every row's own adapter delta from the stack: two ggml_mul_mat_id and an add\n"
     "    ggml_tensor * build_lora_stacked(const llama_adapter_lora_weight & stacked, ggml_tensor * cur, ggml_tensor * res) const;\n\n"
     "    // do mat_mul_id, while optionally apply lora and per-expert scale\n"),
    ("src/llama-graph.cpp",
     "void llm_graph_input_mean::set_input(const llama_ubatch * ubatch) {\n",
     f"// {MARK}\n"
     "void llm_graph_input_lora_route::set_input(const llama_ubatch * ubatch) {\n"
     "    const int64_t n_tokens = ubatch->n_tokens;\n"
     "    auto routed = [&](int64_t i, const llama_adapter_lora * adapter) {\n"
     "        const auto it = routes->find(ubatch->seq_id[i][0]);\n"
     "        return it != routes->end() && it->second == adapter ? 1.0f : 0.0f;\n"
     "    };\n"
     "    std::vector<float> mask;\n"
     "    for (const auto & [adapter, t] : rows) {\n"
     "        mask.clear();\n"
     "        for (int64_t i = 0; i < n_tokens; ++i) {\n"
     "            mask.push_back(routed(i, adapter));\n"
     "        }\n"
     "        ggml_backend_tensor_set(t, mask.data(), 0, mask.size()*sizeof(float));\n"
     "    }\n"
     "    for (const auto & [adapter, t] : outs) {\n"
     "        mask.clear();\n"
     "        for (int64_t i = 0; i < n_tokens; ++i) {\n"
     "            if (n_outputs == n_tokens || (ubatch->output && ubatch->output[i])) {\n"
     "                mask.push_back(routed(i, adapter));\n"
     "            }\n"
     "        }\n"
     "        GGML_ASSERT((int64_t) mask.size() == t->ne[1]);\n"
     "        ggml_backend_tensor_set(t, mask.data(), 0, mask.size()*sizeof(float));\n"
     "    }\n"
     "    auto expert = [&](int64_t i) -> int32_t {\n"
     "        const auto it = routes->find(ubatch->seq_id[i][0]);\n"
     "        if (it == routes->end() || stack == nullptr) {\n"
     "            return 0;\n"
     "        }\n"
     "        const auto e = stack->expert.find(it->second);\n"
     "        return e == stack->expert.end() ? 0 : e->second;\n"
     "    };\n"
     "    std::vector<int32_t> ids;\n"
     "    if (ids_rows != nullptr) {\n"
     "        for (int64_t i = 0; i < n_tokens; ++i) {\n"
     "            ids.push_back(expert(i));\n"
     "        }\n"
     "        ggml_backend_tensor_set(ids_rows, ids.data(), 0, ids.size()*sizeof(int32_t));\n"
     "    }\n"
     "    if (ids_outs != nullptr) {\n"
     "        ids.clear();\n"
     "        for (int64_t i = 0; i < n_tokens; ++i) {\n"
     "            if (n_outputs == n_tokens || (ubatch->output && ubatch->output[i])) {\n"
     "                ids.push_back(expert(i));\n"
     "            }\n"
     "        }\n"
     "        GGML_ASSERT((int64_t) ids.size() == ids_outs->ne[1]);\n"
     "        ggml_backend_tensor_set(ids_outs, ids.data(), 0, ids.size()*sizeof(int32_t));\n"
     "    }\n"
     "}\n\n"
     "bool llm_graph_input_lora_route::can_reuse(const llm_graph_params & params) {\n"
     "    bool res = params.lora_routes == routes && params.lora_stack == stack && params.n_outputs == n_outputs;\n"
     "    for (const auto & [adapter, t] : rows) {\n"
     "        res &= t->ne[1] == params.ubatch.n_tokens;\n"
     "    }\n"
     "    if (ids_rows != nullptr) {\n"
     "        res &= ids_rows->ne[1] == params.ubatch.n_tokens;\n"
     "    }\n"
     "    return res;\n"
     "}\n\n"
     "void llm_graph_input_mean::set_input(const llama_ubatch * ubatch) {\n"),
    ("src/llama-graph.cpp",
     "    prec_policy      (params.prec_policy),\n",
     "    prec_policy      (params.prec_policy),\n"
     f"    lora_routes      (params.lora_routes), // {MARK}\n"
     "    lora_stack       (params.lora_stack),\n"),
    ("src/llama-graph.cpp",
     "ggml_tensor * llm_graph_context::build_lora_mm(\n",
     f"// {MARK}\n"
     "ggml_tensor * llm_graph_context::build_lora_route(const llama_adapter_lora * adapter, ggml_tensor * ab, int row_dim) const {\n"
     "    if (lora_routes == nullptr) {\n"
     "        return ab;\n"
     "    }\n"
     "    const int64_t n_rows = ab->ne[row_dim];\n"
     "    GGML_ASSERT((n_rows == n_tokens || n_rows == (int64_t) n_outputs) && \"LoRA routing: a delta whose rows are neither the batch's tokens nor its outputs\");\n"
     "    auto & masks = n_rows == n_tokens ? lora_route_input()->rows : lora_route_input()->outs;\n"
     "    ggml_tensor * & mask = masks[adapter];\n"
     "    if (mask == nullptr) {\n"
     "        mask = ggml_new_tensor_2d(ctx0, GGML_TYPE_F32, 1, n_rows);\n"
     "        ggml_set_input(mask);\n"
     "        ggml_set_name(mask, \"lora_route\");\n"
     "    }\n"
     "    ggml_tensor * m = row_dim == 1 ? mask : ggml_reshape_3d(ctx0, mask, 1, 1, n_rows);\n"
     "    return ggml_mul(ctx0, ab, m);\n"
     "}\n\n"
     "llm_graph_input_lora_route * llm_graph_context::lora_route_input() const {\n"
     "    if (inp_lora_route == nullptr) {\n"
     "        auto inp = std::make_unique<llm_graph_input_lora_route>(lora_routes, lora_stack, n_outputs);\n"
     "        inp_lora_route = inp.get();\n"
     "        res->add_input(std::move(inp));\n"
     "    }\n"
     "    return inp_lora_route;\n"
     "}\n\n"
     "ggml_tensor * llm_graph_context::build_lora_stacked(const llama_adapter_lora_weight & stacked, ggml_tensor * cur, ggml_tensor * res) const {\n"
     "    const int64_t n_rows = cur->ne[1];\n"
     "    GGML_ASSERT((n_rows == n_tokens || n_rows == (int64_t) n_outputs) && \"LoRA routing: a delta whose rows are neither the batch's tokens nor its outputs\");\n"
     "    ggml_tensor * & ids = n_rows == n_tokens ? lora_route_input()->ids_rows : lora_route_input()->ids_outs;\n"
     "    if (ids == nullptr) {\n"
     "        ids = ggml_new_tensor_2d(ctx0, GGML_TYPE_I32, 1, n_rows);\n"
     "        ggml_set_input(ids);\n"
     "        ggml_set_name(ids, \"lora_stack_ids\");\n"
     "    }\n"
     "    ggml_tensor * x = ggml_view_3d(ctx0, cur, cur->ne[0], 1, n_rows, cur->nb[1], cur->nb[1], 0);\n"
     "    ggml_tensor * t = ggml_mul_mat_id(ctx0, stacked.a, x, ids); // [rank, 1, n_rows]\n"
     "    ggml_tensor * d = ggml_mul_mat_id(ctx0, stacked.b, t, ids); // [n_out, 1, n_rows]\n"
     "    return ggml_add(ctx0, res, ggml_reshape_2d(ctx0, d, d->ne[0], n_rows));\n"
     "}\n\n"
     "ggml_tensor * llm_graph_context::build_lora_mm(\n"),
    ("src/llama-graph.cpp",
     "    if (w_s) {\n        res = ggml_mul(ctx0, res, w_s);\n    }\n\n    for (const auto & lora : *loras) {\n",
     "    if (w_s) {\n        res = ggml_mul(ctx0, res, w_s);\n    }\n\n"
     f"    if (lora_stack != nullptr && cur->ne[2] == 1 && cur->ne[3] == 1) {{ // {MARK}\n"
     "        const auto it = lora_stack->ab.find(w->name);\n"
     "        if (it != lora_stack->ab.end()) {\n"
     "            return build_lora_stacked(it->second, cur, res);\n"
     "        }\n"
     "    }\n\n"
     "    for (const auto & lora : *loras) {\n"),
    ("src/llama-graph.cpp",
     "        ab_cur = ggml_scale(ctx0, ab_cur, scale);\n        res = ggml_add(ctx0, res, ab_cur);\n    }\n\n    return res;\n}\n\nggml_tensor * llm_graph_context::build_lora_mm_id(",
     "        ab_cur = ggml_scale(ctx0, ab_cur, scale);\n"
     "        ab_cur = build_lora_route(lora.first, ab_cur, 1);\n"
     "        res = ggml_add(ctx0, res, ab_cur);\n    }\n\n    return res;\n}\n\nggml_tensor * llm_graph_context::build_lora_mm_id("),
    ("src/llama-graph.cpp",
     "                ids\n                );\n\n        ab_cur = ggml_scale(ctx0, ab_cur, scale);\n        res = ggml_add(ctx0, res, ab_cur);\n",
     "                ids\n                );\n\n        ab_cur = ggml_scale(ctx0, ab_cur, scale);\n"
     "        ab_cur = build_lora_route(lora.first, ab_cur, 2);\n"
     "        res = ggml_add(ctx0, res, ab_cur);\n"),
    ("src/llama-graph.cpp",
     "                        ), scale);\n\n            cur = ggml_add(ctx0, cur, inpL_delta);\n",
     "                        ), scale);\n\n"
     "            inpL_delta = build_lora_route(lora.first, inpL_delta, 1);\n"
     "            cur = ggml_add(ctx0, cur, inpL_delta);\n"),
]


SDIST_EDITS: list[tuple[str, str, str]] = [
    ("CMakeLists.txt",
     '    set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)\n',
     '    set(LLAMA_BUILD_COMMON OFF CACHE BOOL "Build llama.cpp common library" FORCE)'
     ' # SLM Appliance (scripts/patch_llama_cpp.py): nothing in the wheel links it\n'),
]


def planned(root: Path, edits: list[tuple[str, str, str]]) -> dict[Path, str]:
    """The edited text of every file ``edits`` touch under ``root``; stops naming the file and the
    edit when a text is not found exactly once."""
    texts: dict[Path, str] = {}
    for name, old, new in edits:
        path = root / name
        text = texts.get(path)
        if text is None:
            text = path.read_text(encoding="utf-8")
        count = text.count(old)
        if count != 1:
            raise SystemExit(f"patch_llama_cpp: {name}: expected the text below once, found it {count} times "
                             f"(another llama.cpp version?):\n{old}")
        texts[path] = text.replace(old, new)
    return texts


def write(texts: dict[Path, str]) -> None:
    for path, text in texts.items():
        temp = path.with_name(path.name + ".patching")
        temp.write_text(text, encoding="utf-8")
        temp.replace(path)


def patch(root: Path, sdist: Path | None = None) -> bool:
    """Apply EDITS under ``root`` (the llama.cpp folder) and, given the sdist folder, SDIST_EDITS
    under it; nothing is written unless every edit finds its text. False when patched already."""
    if MARK in (root / "include/llama.h").read_text(encoding="utf-8"):
        return False
    texts = planned(root, EDITS)
    if sdist is not None:
        texts.update(planned(sdist, SDIST_EDITS))
    write(texts)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    top = Path(argv[0])
    sdist = top if (top / "vendor" / "llama.cpp").is_dir() else None
    root = top / "vendor" / "llama.cpp" if sdist else top
    if not (root / "include" / "llama.h").is_file():
        print(f"patch_llama_cpp: no llama.cpp tree under {top}", file=sys.stderr)
        return 2
    changed = patch(root, sdist)
    print(f"patch_llama_cpp: {'patched' if changed else 'already patched'} {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
