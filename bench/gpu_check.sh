#!/usr/bin/env bash
# bench/gpu.py on a lent GPU as one command, within the device's 10-minute limit per command.
#
# Here, once (this machine has mistral-common; the device has no network and may lack it):
#     bash bench/gpu_check.sh --prepare     # writes the Mistral + ChatML tokenizer to out/gpu-tokenizer
# Then, with the device tool:
#     run(command="bash bench/gpu_check.sh", carry=["out/gpu-tokenizer"], timeout_s=570)
# On a node of several GPUs, LoRA and QLoRA sharded over all of them against one, alone:
#     bash bench/gpu_check.sh --sections lora-ranks      (any other flags go to bench/gpu.py too)
# The figures come back under $OUT (gpu.json, gpu.log); copy gpu.json to bench/results/gpu-<device>.json
# and commit it. bench/gpu.py writes the JSON after each section, so a run cut short keeps what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENIZER=out/gpu-tokenizer

if [[ "${1:-}" == "--prepare" ]]; then
    python -c "
import sys; sys.path[:0] = ['bench', '.']
from gpu import load_tokenizer_for_bench
load_tokenizer_for_bench(None).save('$TOKENIZER')"
    echo "tokenizer written to $TOKENIZER; next, on the device: bash bench/gpu_check.sh (carry $TOKENIZER)"
    exit 0
fi

OUT="${OUT:-out/gpu-check}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.log" || true
# 8 minutes for the benchmark itself, the rest of the 9.5 minutes for start-up and copying back.
# recompiles: a compiled step that recompiles per token would show here.
TORCH_LOGS=recompiles PYTHONUNBUFFERED=1 timeout 480 python3 bench/gpu.py --tokenizer "$TOKENIZER" --out "$OUT/gpu.json" "$@" 2>&1 \
    | grep -v "Warning\|warnings.warn" | tee -a "$OUT/gpu.log"
