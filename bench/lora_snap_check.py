"""Does quantizing a fine-tune of an imported Q4_K_M base snap its LoRA delta back to the base?

    .venv/bin/python bench/lora_snap_check.py WS/bases/BASE_ID WS/models/VERSION

Per tensor (four sampled decoder weights): the delta's rms (merged - base), the rounding's rms, and
the share of the delta the dequantized q4_k_m / q8_0 file keeps (projection of file - base on the
delta). A base imported from Q4_K_M sits exactly on Q4_K's grid, so a delta under half a step
rounds back to it (bench/README.md, "Q4_K_M loses the fine-tune").
"""
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from appliance.export.gguf_weights import gguf_py, open_gguf

gguf = gguf_py()
if len(sys.argv) != 3:  # `make bench` runs every script bare
    print("skipped: lora_snap_check.py needs BASE_FOLDER VERSION_FOLDER; see its docstring")
    sys.exit(0)
base_dir, version_dir = Path(sys.argv[1]), Path(sys.argv[2])
base = load_file(str(base_dir / "model.safetensors"))
merged = load_file(str(version_dir / "merged" / "model.safetensors"))
names = {"blk.5.ffn_down.weight": "model.layers.5.mlp.down_proj.weight",
         "blk.5.attn_output.weight": "model.layers.5.self_attn.o_proj.weight",
         "blk.12.ffn_up.weight": "model.layers.12.mlp.up_proj.weight",
         "blk.12.attn_v.weight": "model.layers.12.self_attn.v_proj.weight"}
out = {}
for quant in ("q4_k_m", "q8_0"):
    g = open_gguf(version_dir / f"model-{quant}.gguf")
    tensors = {t.name: t for t in g.reader.tensors}
    for gname, hname in names.items():
        t = tensors[gname]
        q = gguf.quants.dequantize(t.data, t.tensor_type).reshape(merged[hname].shape).astype(np.float64)
        b, m = base[hname].astype(np.float64), merged[hname].astype(np.float64)
        delta = m - b
        # share of the delta kept: projection of (q - b) on delta / |delta|^2
        kept = float(((q - b) * delta).sum() / (delta * delta).sum())
        out.setdefault(gname, {})["delta_rms"] = float(np.sqrt((delta ** 2).mean()))
        out[gname][quant] = {"type": t.tensor_type.name, "rounding_rms": float(np.sqrt(((q - m) ** 2).mean())),
                             "delta_kept": round(kept, 3)}
print(json.dumps(out, indent=1))
