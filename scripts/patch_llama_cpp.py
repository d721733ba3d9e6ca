"""Patch the vendored llama.cpp of the llama-cpp-python sdist: per-sequence LoRA routing.

    python scripts/patch_llama_cpp.py SDIST_DIR     (scripts/setup_env.sh runs it before compiling)

llama.cpp applies the LoRA adapters set on a context to every row of a batch
(``llm_graph_context::build_lora_mm``, src/llama-graph.cpp), so a server that gives each request
its own adapter must decode each adapter's sequences in a ``llama_decode`` of their own. This
patch adds two functions to llama.h:

    llama_set_adapters_lora_routing(ctx, enabled)
    llama_set_adapter_lora_seq(ctx, seq_id, adapter)      (adapter NULL: the base model)
    llama_set_cpu_reference_kernels(ctx, enabled)

With routing on, every adapter set by ``llama_set_adapters_lora`` contributes its scaled B(Ax) only
to the rows of the sequences routed to it: the delta is multiplied by a 0/1 row mask (a graph
input filled from the ubatch's sequence ids), so sequences of different adapters share one
decode step. A routed row computes base + 1.0 * delta and an unrouted one base + 0.0 * delta,
bit for bit what the context gives with only that row's adapter set (bench/README.md).

The third switches the context's CPU backend to ggml's reference kernels
(``ggml_backend_cpu_set_use_ref``, which upstream exposes to backends but not through llama.h):
flash attention then always takes its row-by-row path (a lone query row would otherwise split its
KV across threads, and 64 rows or more take a tiled kernel, both rounding differently), and the
tiled matmul and op fusion are off: what the serving engine's batch invariance needs.

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
     "using llama_lora_routes = std::unordered_map<llama_seq_id, const llama_adapter_lora *>;\n"),
    ("src/llama-adapter.h",
     "        return ab_map.size() * 6u; // a, b, scale, add, 2 x mul_mat\n",
     "        return ab_map.size() * 8u; // a, b, scale, add, 2 x mul_mat, route mask mul + reshape\n"),
    ("src/llama-context.h",
     "    bool adapters_lora_are_same(llama_adapter_lora ** adapters, size_t n_adapters, float * scales);\n",
     "    bool adapters_lora_are_same(llama_adapter_lora ** adapters, size_t n_adapters, float * scales);\n\n"
     f"    // {MARK}\n"
     "    void set_adapters_lora_routing(bool enabled);\n"
     "    void set_adapter_lora_seq(llama_seq_id seq_id, const llama_adapter_lora * adapter);\n"
     "    void set_cpu_reference_kernels(bool enabled);\n"),
    ("src/llama-context.h",
     "    llama_adapter_loras_ptr loras;\n",
     "    llama_adapter_loras_ptr loras;\n\n"
     f"    // {MARK}\n"
     "    bool              lora_routing = false;\n"
     "    llama_lora_routes lora_routes;\n"),
    ("src/llama-context.cpp",
     "bool llama_context::adapters_lora_are_same(",
     f"// {MARK}\n"
     "void llama_context::set_adapters_lora_routing(bool enabled) {\n"
     "    if (lora_routing != enabled) {\n"
     "        lora_routing = enabled;\n"
     "        sched_need_reserve = true;\n"
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
     "    };\n"),
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
     "    llm_graph_input_lora_route(const llama_lora_routes * routes, uint32_t n_outputs) : routes(routes), n_outputs(n_outputs) {}\n"
     "    virtual ~llm_graph_input_lora_route() = default;\n\n"
     "    void set_input(const llama_ubatch * ubatch) override;\n\n"
     "    bool can_reuse(const llm_graph_params & params) override;\n\n"
     "    std::unordered_map<const llama_adapter_lora *, ggml_tensor *> rows; // F32 [1, n_tokens]\n"
     "    std::unordered_map<const llama_adapter_lora *, ggml_tensor *> outs; // F32 [1, n_outputs]\n\n"
     "    const llama_lora_routes * routes;\n"
     "    const uint32_t n_outputs;\n"
     "};\n\n"
     "class llm_graph_input_mean : public llm_graph_input_i {\n"),
    ("src/llama-graph.h",
     "    llm_graph_result * res;\n\n    // return true if the \"other\" params",
     "    llm_graph_result * res;\n\n"
     f"    const llama_lora_routes * lora_routes = nullptr; // {MARK}\n\n"
     "    // return true if the \"other\" params"),
    ("src/llama-graph.h",
     "            loras == other.loras &&\n",
     "            loras == other.loras &&\n"
     "            lora_routes == other.lora_routes &&\n"),
    ("src/llama-graph.h",
     "    const llama_adapter_loras    * loras;\n    const llama_memory_context_i * mctx;\n    const llama_cross            * cross;\n\n    const llama_prec_policy * prec_policy;\n",
     "    const llama_adapter_loras    * loras;\n    const llama_memory_context_i * mctx;\n    const llama_cross            * cross;\n\n    const llama_prec_policy * prec_policy;\n\n"
     f"    // {MARK}\n"
     "    const llama_lora_routes * lora_routes;\n"
     "    mutable llm_graph_input_lora_route * inp_lora_route = nullptr;\n"),
    ("src/llama-graph.h",
     "    // do mat_mul_id, while optionally apply lora and per-expert scale\n",
     f"    // {MARK}: an adapter's delta times its row mask (row_dim: the dimension of ab that holds the rows)\n"
     "    ggml_tensor * build_lora_route(const llama_adapter_lora * adapter, ggml_tensor * ab, int row_dim) const;\n\n"
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
     "}\n\n"
     "bool llm_graph_input_lora_route::can_reuse(const llm_graph_params & params) {\n"
     "    bool res = params.lora_routes == routes && params.n_outputs == n_outputs;\n"
     "    for (const auto & [adapter, t] : rows) {\n"
     "        res &= t->ne[1] == params.ubatch.n_tokens;\n"
     "    }\n"
     "    return res;\n"
     "}\n\n"
     "void llm_graph_input_mean::set_input(const llama_ubatch * ubatch) {\n"),
    ("src/llama-graph.cpp",
     "    prec_policy      (params.prec_policy),\n",
     "    prec_policy      (params.prec_policy),\n"
     f"    lora_routes      (params.lora_routes), // {MARK}\n"),
    ("src/llama-graph.cpp",
     "ggml_tensor * llm_graph_context::build_lora_mm(\n",
     f"// {MARK}\n"
     "ggml_tensor * llm_graph_context::build_lora_route(const llama_adapter_lora * adapter, ggml_tensor * ab, int row_dim) const {\n"
     "    if (lora_routes == nullptr) {\n"
     "        return ab;\n"
     "    }\n"
     "    if (inp_lora_route == nullptr) {\n"
     "        auto inp = std::make_unique<llm_graph_input_lora_route>(lora_routes, n_outputs);\n"
     "        inp_lora_route = inp.get();\n"
     "        res->add_input(std::move(inp));\n"
     "    }\n"
     "    const int64_t n_rows = ab->ne[row_dim];\n"
     "    GGML_ASSERT((n_rows == n_tokens || n_rows == (int64_t) n_outputs) && \"LoRA routing: a delta whose rows are neither the batch's tokens nor its outputs\");\n"
     "    auto & masks = n_rows == n_tokens ? inp_lora_route->rows : inp_lora_route->outs;\n"
     "    ggml_tensor * & mask = masks[adapter];\n"
     "    if (mask == nullptr) {\n"
     "        mask = ggml_new_tensor_2d(ctx0, GGML_TYPE_F32, 1, n_rows);\n"
     "        ggml_set_input(mask);\n"
     "        ggml_set_name(mask, \"lora_route\");\n"
     "    }\n"
     "    ggml_tensor * m = row_dim == 1 ? mask : ggml_reshape_3d(ctx0, mask, 1, 1, n_rows);\n"
     "    return ggml_mul(ctx0, ab, m);\n"
     "}\n\n"
     "ggml_tensor * llm_graph_context::build_lora_mm(\n"),
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


def patch(root: Path) -> bool:
    """Apply EDITS under ``root`` (the llama.cpp folder); False when it was patched already."""
    if MARK in (root / "include/llama.h").read_text(encoding="utf-8"):
        return False
    texts: dict[str, str] = {}
    for name, old, new in EDITS:
        text = texts.get(name)
        if text is None:
            text = (root / name).read_text(encoding="utf-8")
        count = text.count(old)
        if count != 1:
            raise SystemExit(f"patch_llama_cpp: {name}: expected the text below once, found it {count} times "
                             f"(another llama.cpp version?):\n{old}")
        texts[name] = text.replace(old, new)
    for name, text in texts.items():
        path = root / name
        temp = path.with_name(path.name + ".patching")
        temp.write_text(text, encoding="utf-8")
        temp.replace(path)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    top = Path(argv[0])
    root = top / "vendor" / "llama.cpp" if (top / "vendor" / "llama.cpp").is_dir() else top
    if not (root / "include" / "llama.h").is_file():
        print(f"patch_llama_cpp: no llama.cpp tree under {top}", file=sys.stderr)
        return 2
    changed = patch(root)
    print(f"patch_llama_cpp: {'patched' if changed else 'already patched'} {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
