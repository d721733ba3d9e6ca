#!/usr/bin/env bash
# GPU check: 7B-class QLoRA SFT at seq 2048 with the unsloth and hf backends, peak memory + tokens/s.
#
#     bash scripts/gpu_check.sh [SITE.tar.xz | WHEEL_DIR ...]
#     GEMMA_GGUF=/path/gemma-3-270m-q4_k_m.gguf bash scripts/gpu_check.sh [...]   (+ a real 270M model)
#
# On a lent CUDA machine (see /work/.library/device/README.md): what the device's image lacks
# (unsloth, unsloth_zoo, bitsandbytes, trl, datasets, pydantic and their needs, for its Python 3.12)
# travels in an ignored folder named in `carry`: best as the ~10 MB tarball scripts/gpu_site.sh
# builds (the raw wheels are ~80 MB, over the 64 MiB a call may carry), unpacked into /tmp/site;
# or as wheel folders, installed with pip --target into /tmp/site. The model is a random-init Llama-3-8B-shaped model
# (no weights downloaded), saved once to /tmp/gpu-check/base and loaded in NF4. Each backend runs
# in its own process so torch.cuda.max_memory_allocated is its own; the memory planner's estimate
# is printed beside it (appliance train plan). Prints one line per backend and the unsloth/hf ratio.
# STATUS: not yet run on a GPU (2026-12-05: a session was lent one, but new loans stayed paused);
# smoke-tested on CPU with a tiny shape (hf path, and unsloth's CPU path) and the tarball from
# scripts/gpu_site.sh.
# The hf path loads the base in NF4 with bf16 compute and trains with bf16=False (LoRA in fp32),
# as appliance/train/backends.py does; unsloth trains in bf16.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# unsloth fetches a README from the hub to count installs unless told not to (the machine has no network)
export UNSLOTH_DISABLE_STATISTICS=1
export APPLIANCE_HOME=${APPLIANCE_HOME:-/tmp/gpu-check/ws}
for dir in "$@"; do
  if [ -f "$dir" ]; then
    mkdir -p /tmp/site && tar -C /tmp/site -xJf "$dir"
  else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$dir"/*.whl
  fi
done
if [ -d /tmp/site ]; then export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"; else export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; fi
STEPS=${STEPS:-8} SEQ=${SEQ:-2048}
export STEPS SEQ
mkdir -p /tmp/gpu-check
# BACKEND_TIMEOUT=SECONDS stops a backend that hangs, so the other still runs inside a short lease
limit=(); [ -n "${BACKEND_TIMEOUT:-}" ] && limit=(timeout "$BACKEND_TIMEOUT")
phase() { echo "== $(date -u +%T) $*"; }
phase "build the base"

python3 - <<'EOF'
import os, torch
from transformers import LlamaConfig, LlamaForCausalLM
out = "/tmp/gpu-check/base"
if not os.path.isfile(f"{out}/config.json"):
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                      rope_theta=500000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: 16 GB on the GPU, not 32
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    print("saved random Llama-3-8B-shaped base to", out, flush=True)
if not os.path.isfile(f"{out}/tokenizer.json"):  # unsloth's and trl's loaders both need a tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eot_id|>", pad_token="<|eot_id|>",
                                   chat_template="{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|eot_id|>{% endfor %}")
    fast.save_pretrained(out)
    print("saved a byte-level tokenizer beside it", flush=True)
EOF

phase "plan"
for b in unsloth hf; do  # the planner's estimate, printed beside the measurement at the end
  python3 -m appliance.cli train plan --base /tmp/gpu-check/base --gpu-mem 12GiB --seq "$SEQ" --4bit \
    --grad-checkpointing --backend "$b" --json > /tmp/gpu-check/plan-$b.json || true
done

run_backend() {
${limit[@]+"${limit[@]}"} python3 - "$1" <<'EOF'
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
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"backend": backend, "seq": seq, "steps": steps,
                  "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                  "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
                  "tokens_s": round((steps - 1) * seq / elapsed, 1), "s_per_step": round(elapsed / (steps - 1), 3),
                  "loss_first_last": [round(losses[0], 3), round(losses[-1], 3)] if losses else None,
                  "gpu": torch.cuda.get_device_name(0)}), flush=True)
EOF
}
results=()
failed=0
for b in unsloth hf; do
  phase "$b"
  # pipefail (set above) makes a crashing backend fail the pipeline; a backend that exits 0 without
  # its result line is a failure too, never a silently missing row
  if line=$(set -o pipefail; run_backend "$b" 2>/tmp/gpu-check/$b.err | tail -1) \
      && python3 -c 'import json,sys; assert "peak_gib" in json.loads(sys.argv[1])' "$line" 2>/dev/null; then
    echo "$line"; results+=("$line")
  else
    echo "$b FAILED:"; tail -20 /tmp/gpu-check/$b.err; failed=1
  fi
done
# A small real model too: the pretrained Gemma 3 270M GGUF (GEMMA_GGUF=path, e.g. carried beside the
# wheels; or its PyPI package name when installed in /tmp/site), imported through the parity gate and
# fine-tuned with `appliance train sft` on the sample corpus' Q&A pairs (backend auto: unsloth when it
# imports). Skipped when GEMMA_GGUF is unset.
if [ -n "${GEMMA_GGUF:-}" ]; then
  export APPLIANCE_HOME=/tmp/gpu-check/ws
  printf 'max_steps = %s\nbatch_size = 8\nmax_seq_length = 512\n' "$STEPS" > /tmp/gpu-check/gemma-sft.toml
  if base=$(set -o pipefail; python3 -m appliance.cli models import "$GEMMA_GGUF" 2>/tmp/gpu-check/gemma.err | tail -1) \
      && ds=$(set -o pipefail; python3 -m appliance.cli data ingest appliance/sample_corpus/qa.jsonl --dataset gpu-qa 2>>/tmp/gpu-check/gemma.err | tail -1) \
      && started=$(date +%s) \
      && run=$(set -o pipefail; python3 -m appliance.cli train sft --dataset "$ds" --base "$base" \
               --recipe /tmp/gpu-check/gemma-sft.toml 2>>/tmp/gpu-check/gemma.err | tail -1); then
    echo "{\"gemma3_270m\": \"$base\", \"run\": \"$run\", \"steps\": $STEPS, \"seconds\": $(( $(date +%s) - started ))}"
    grep -E "final loss|memory-safe" /tmp/gpu-check/gemma.err || true
  else
    echo "gemma3-270m FAILED:"; tail -20 /tmp/gpu-check/gemma.err; failed=1
  fi
fi

python3 - ${results[@]+"${results[@]}"} <<'EOF'
import json, sys
r = {d["backend"]: d for d in map(json.loads, sys.argv[1:])}
for b, d in r.items():
    try:
        with open(f"/tmp/gpu-check/plan-{b}.json") as f:
            est = f"{json.load(f)['total'] / 2**30:.2f} GiB"
    except (OSError, ValueError, KeyError):
        est = "unavailable"
    print(f"{b}: measured peak {d['peak_gib']} GiB allocated / {d['peak_reserved_gib']} GiB reserved, "
          f"planner estimate {est}, {d['tokens_s']} tokens/s")
if "unsloth" in r:
    print(f"unsloth QLoRA 8B seq {r['unsloth']['seq']}: peak {r['unsloth']['peak_gib']} GiB "
          f"({'under' if r['unsloth']['peak_gib'] < 12 else 'OVER'} 12 GiB)")
if {"unsloth", "hf"} <= r.keys():
    print(f"tokens/s unsloth/hf = {r['unsloth']['tokens_s'] / r['hf']['tokens_s']:.2f}")
EOF
exit "$failed"
