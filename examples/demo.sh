#!/usr/bin/env bash
# The whole path offline, on a CPU, in about two minutes, with the bundled synthetic export:
#   1. a tiny random Mistral-shaped model and a small tokenizer (examples/tiny_model.py);
#   2. full fine-tuning of it (FSDP, here one CPU process), which gives it the sample's language;
#   3. LoRA adapters on top of that, the way a real run tunes Dolphin-7B, ending in a fidelity report;
#   4. a reply sampled as the export's owner.
# Real use is steps 3 and 4 with --model and --data pointing at a real model and export, and without
# the tiny-model settings below: a 3.5M-parameter model and 110 sessions want shorter rows, smaller
# batches, more epochs and a higher learning rate than Dolphin-7B and years of chats.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/demo}
tiny="--seq-len 256 --micro-batch 8 --batch 8 --lr 3e-3 --eval-every 0"
tiny_lora="--epochs 10 --lora-r 64 --lora-alpha 64 --lora-targets q,k,v,o,gate,up,down --save-every 50"

rm -rf "$out/base" "$out/full" "$out/run"  # a second demo starts afresh (train.py keeps a finished run)
python examples/tiny_model.py --out "$out/base"
torchrun --standalone --nproc-per-node 1 train.py --fsdp --model "$out/base" --data examples/telegram_export \
    --out "$out/full" --epochs 3 --export-dtype fp32 --save-every 0 $tiny
python train.py --lora --model "$out/full/model" --data examples/telegram_export --out "$out/run" $tiny $tiny_lora
python sample.py --checkpoint "$out/run" --speaker "Alexander Smirnov" \
    --prompt "привет! как дела?\nты сегодня свободен?" --seed 0
