#!/usr/bin/env bash
# Quickstart: the embedded corpus (the documentation that ships with Python) through every stage.
# Runs on a CPU in minutes; every artifact lands in $OUT and its fingerprint is printed at the end.
set -euo pipefail
OUT=${OUT:-runs/quickstart}
SEED=${SEED:-0}
mkdir -p "$OUT"

llmkit clean builtin:python-docs -o "$OUT/corpus" --seed "$SEED" --force

echo
echo "Artifacts (fingerprints):"
for artifact in "$OUT"/corpus; do
  printf '  %-28s %s\n' "$artifact" "$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["fingerprint"][:16])' "$artifact/manifest.json")"
done
