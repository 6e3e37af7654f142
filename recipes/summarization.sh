#!/usr/bin/env bash
# DialogSum: pretrain on dialogues and summaries, fine-tune with the summarize template, ROUGE.
#   clean -> tokenizer train -> tokenize -> pretrain -> finetune --template summarize -> eval (ROUGE of its generations)
# With a network: the hub's `knkarthick/dialogsum` has the same {dialogue, summary} fields (rename
# dialogue to document, or pass --field dialogue to eval).
[ -n "${BASH_VERSION:-}" ] || { echo "error: $0 is a bash script: run it with bash $0" >&2; exit 2; }
source "$(dirname "$0")/common.sh"
need_python  # (its data-preparation script, checked before any stage runs)
need_data summarization/train.jsonl summarization/test.jsonl

if [ "$SIZE" = tiny ]; then
  VOCAB=512; MODEL=(--model tiny --n-layer 1 --n-embd 32 --n-head 2 --context-length 128)
  PRETRAIN=(--max-steps 8 --batch-tokens 1024 --micro-batch 8 --eval-every 4 --save-every 4)
  FINETUNE=(--max-steps 6 --batch-size 8 --eval-every 3 --save-every 3); EVAL=(--limit 10); NEW=16
else
  VOCAB=4096; MODEL=(--model tiny --context-length 512)
  PRETRAIN=(--max-steps 600 --batch-tokens 8192 --micro-batch 16 --lr 3e-3 --eval-every 200 --save-every 200)
  FINETUNE=(--epochs 3 --batch-size 16 --lr 1e-3 --eval-every 100 --save-every 200); EVAL=(); NEW=60
fi

stage "pretraining text from dialogues and summaries"
"$PYTHON" "$REPO/recipes/jsonl_text.py" "$OUT/text.txt" "$DATA/summarization/train.jsonl" document summary
stage clean;           llmkit clean "$OUT/text.txt" --doc-per blank-line -o "$OUT/corpus" --seed "$SEED" --force
stage tokenizer train; llmkit tokenizer train "$OUT/corpus" -o "$OUT/tokenizer" --vocab-size "$VOCAB" --seed "$SEED" --force
stage tokenize;        llmkit tokenize "$OUT/corpus" --tokenizer "$OUT/tokenizer" -o "$OUT/tokens" --seed "$SEED" --force
stage pretrain;        llmkit pretrain "$OUT/tokens" -o "$OUT/pretrain" "${MODEL[@]}" "${PRETRAIN[@]}" --seed "$SEED" --force
stage finetune;        llmkit finetune "$OUT/pretrain" --task sft --template summarize --data "$DATA/summarization/train.jsonl" \
                         --truncate -o "$OUT/sft" "${FINETUNE[@]}" --seed "$SEED" --force
stage eval;            llmkit eval "$OUT/sft" --metric rouge --data "$DATA/summarization/test.jsonl" \
                         --max-new-tokens "$NEW" ${EVAL[@]+"${EVAL[@]}"} -o "$OUT/eval" --seed "$SEED" --force
stage results;         llmkit report "$OUT"/{corpus,tokenizer,tokens,pretrain,sft,eval}
