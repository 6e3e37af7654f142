# Shared settings for every recipe: sourced, not run.
#   SIZE=default|tiny   tiny: seconds-long runs for CI (same commands, smaller numbers)
#   SEED=0              threaded into every stage
#   LLMKIT_SHARED_DATA  the shared data sets (default: ../shared/data beside the repository)
#   OUT                 where the artifacts go (default: runs/<recipe>)
set -euo pipefail
RECIPE=$(basename "$0" .sh)
SIZE=${SIZE:-default}
SEED=${SEED:-0}
OUT=${OUT:-runs/$RECIPE}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${LLMKIT_SHARED_DATA:-$REPO/../shared/data}
if ! command -v llmkit >/dev/null 2>&1; then
  echo "error: llmkit is not on PATH; activate the project's environment (source .venv/bin/activate) or run make demo" >&2
  exit 1
fi

# Every stage is an llmkit command; three recipes also run a small Python script (need_python first),
# by default with the interpreter llmkit runs in, which has pyarrow for docs_qa.py: the `python` beside
# the llmkit script (found through a link, as pipx and ~/.local/bin make), else the one its launcher
# names: its #! line, pip's `'''exec' "PYTHON"` second line under `#!/bin/sh` (an interpreter path too
# long for a #! line, or with spaces), or the command after `#!/usr/bin/env`.
need_python() {
  if [ -z "${PYTHON:-}" ]; then
    local script first
    script=$(readlink -f "$(command -v llmkit)")
    PYTHON=$(dirname "$script")/python
    first=$(head -n 1 "$script")
    if [ ! -x "$PYTHON" ]; then
      case "$first" in
        # (pip quotes the path only where it has a space)
        '#!/bin/sh'*) PYTHON=$(sed -n "2s/^'''exec' \(\"\([^\"]*\)\"\|\([^ ]*\)\) .*/\2\3/p" "$script") ;;
        '#!'*/env\ *) PYTHON=${first#*/env } PYTHON=${PYTHON%% *} ;;
        '#!'*) PYTHON=${first#\#!} PYTHON=${PYTHON%% *} ;;
      esac
    fi
  fi
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: PYTHON=$PYTHON is not a command; set PYTHON to the interpreter llmkit is installed in (e.g. PYTHON=.venv/bin/python)" >&2
    exit 1
  fi
  if ! "$PYTHON" -c 'import llmkit' >/dev/null 2>&1; then  # (a shell or another Python would run the script as garbage)
    echo "error: PYTHON=$PYTHON cannot import llmkit; set PYTHON to the interpreter llmkit is installed in (e.g. PYTHON=.venv/bin/python)" >&2
    exit 1
  fi
}
case "$SIZE" in
  default|tiny) ;;
  *) echo "error: SIZE must be default or tiny, got '$SIZE'" >&2; exit 2 ;;
esac
# OUT is relative to where you run the recipe (the data folder is found from the repository); each
# stage makes it, so a recipe that stops at a missing data set leaves no empty folder behind

need_data() {  # need_data FILE...: fail early, naming the variable to set
  for f in "$@"; do
    if [ ! -e "$DATA/$f" ]; then
      echo "error: $DATA/$f not found; set LLMKIT_SHARED_DATA to the folder holding the shared data sets" >&2
      exit 1
    fi
  done
}

if [ -t 2 ]; then  # bold stage headings on a terminal; plain text in logs
  stage() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
else
  stage() { printf '\n== %s\n' "$*" >&2; }
fi
