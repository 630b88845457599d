#!/usr/bin/env bash
# The whole path offline, on a CPU, in a few minutes: a tiny base model, LoRA on the bundled sample
# export, a held-out evaluation, and a reply sampled as the export's owner.
# Real use is the same two commands with --model and --data pointing at a real model and export
# (and without --epochs/--lr, which a tiny model needs larger than a 7B one does).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/demo}

python examples/tiny_model.py --out "$out/base"
python train.py --lora --model "$out/base" --data examples/telegram_export --out "$out/run" \
    --seq-len 256 --micro-batch 8 --batch 8 --epochs 12 --lr 3e-3 \
    --lora-r 64 --lora-alpha 64 --lora-targets q,k,v,o,gate,up,down --eval-every 20
python sample.py --checkpoint "$out/run" --speaker "Alexander Smirnov" --as "Катя Морозова" \
    --prompt "привет! как дела?\nты сегодня свободен?" --seed 0
