#!/usr/bin/env bash
# GPU check: 7B-class QLoRA SFT at seq 2048 with the unsloth and hf backends, peak memory + tokens/s.
#
#     bash scripts/gpu_check.sh [WHEEL_DIR ...]
#
# On a lent CUDA machine (see /work/.library/device/README.md): the gpu extra's wheels
# (unsloth, unsloth_zoo, bitsandbytes and what they need, downloaded for the device's Python)
# travel in ignored folders named in `carry` (over 64 MiB: split across two folders/calls) and are
# installed with pip --target into /tmp/site. The model is a random-init Llama-3-8B-shaped model
# (no weights downloaded), saved once to /tmp/gpu-check/base and loaded in NF4. Each backend runs
# in its own process so torch.cuda.max_memory_allocated is its own; the memory planner's estimate
# is printed beside it (appliance train plan). Prints one line per backend and the unsloth/hf ratio.
# STATUS: written without a GPU (no device was lent to the sessions that wrote it); not yet run.
# The hf path loads the base in NF4 with bf16 compute and trains with bf16=False (LoRA in fp32),
# as appliance/train/backends.py does; unsloth trains in bf16.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for dir in "$@"; do
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$dir"/*.whl
done
if [ -d /tmp/site ]; then export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"; else export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; fi
STEPS=${STEPS:-8} SEQ=${SEQ:-2048}
export STEPS SEQ
mkdir -p /tmp/gpu-check

python3 - <<'EOF'
import os, torch
from transformers import LlamaConfig, LlamaForCausalLM
out = "/tmp/gpu-check/base"
if not os.path.isfile(f"{out}/config.json"):
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                      rope_theta=500000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    print("saved random Llama-3-8B-shaped base to", out, flush=True)
EOF

python3 -m appliance.cli train plan --base /tmp/gpu-check/base --gpu-mem 12GiB --seq "$SEQ" --4bit --grad-checkpointing --backend hf || true
python3 -m appliance.cli train plan --base /tmp/gpu-check/base --gpu-mem 12GiB --seq "$SEQ" --4bit --grad-checkpointing --backend unsloth || true

run_backend() {
python3 - "$1" <<'EOF'
import json, os, sys, time
backend, steps, seq = sys.argv[1], int(os.environ["STEPS"]), int(os.environ["SEQ"])
# the backends' own loading code (appliance/train/backends.py), so the check measures what `appliance
# train sft --4bit --backend ...` runs: NF4 + double quantisation, LoRA r=16 on all projections
from appliance.config import SFTRecipe
from appliance.train.backends import precision_args, select_backend, sft_model
assert select_backend(backend) == backend
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer
base = "/tmp/gpu-check/base"
from pathlib import Path
recipe = SFTRecipe(load_in_4bit=True, gradient_checkpointing=True, max_seq_length=seq, lora_r=16, lora_alpha=32)
model, peft_config = sft_model(backend, Path(base), recipe)
g = torch.Generator().manual_seed(0)
rows = [{"input_ids": torch.randint(10, 128000, (seq,), generator=g).tolist()} for _ in range(steps + 2)]
args = SFTConfig(output_dir=f"/tmp/gpu-check/{backend}", max_steps=steps, per_device_train_batch_size=1,
                 learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to=[], **precision_args(backend),
                 gradient_checkpointing=backend == "hf", gradient_checkpointing_kwargs={"use_reentrant": False},
                 max_length=seq, packing=False)
from transformers import TrainerCallback
class Clock(TrainerCallback):  # time from the end of step 1 (kernels warmed up) to the end
    def on_step_end(self, args, state, control, **kw):
        torch.cuda.synchronize()
        if state.global_step == 1:
            self.start = time.time()
        self.end = time.time()
clock = Clock()
trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), peft_config=peft_config,
                     callbacks=[clock])
torch.cuda.reset_peak_memory_stats()
trainer.train()
elapsed = clock.end - clock.start
print(json.dumps({"backend": backend, "seq": seq, "steps": steps,
                  "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                  "tokens_s": round((steps - 1) * seq / elapsed, 1)}), flush=True)
EOF
}
results=()
for b in unsloth hf; do
  line=$(run_backend "$b" 2>/tmp/gpu-check/$b.err | tail -1) || { echo "$b failed:"; tail -20 /tmp/gpu-check/$b.err; continue; }
  echo "$line"; results+=("$line")
done
python3 - "${results[@]}" <<'EOF'
import json, sys
r = {d["backend"]: d for d in map(json.loads, sys.argv[1:])}
if "unsloth" in r:
    print(f"unsloth QLoRA 8B seq {r['unsloth']['seq']}: peak {r['unsloth']['peak_gib']} GiB "
          f"({'under' if r['unsloth']['peak_gib'] < 12 else 'OVER'} 12 GiB)")
if {"unsloth", "hf"} <= r.keys():
    print(f"tokens/s unsloth/hf = {r['unsloth']['tokens_s'] / r['hf']['tokens_s']:.2f}")
EOF
