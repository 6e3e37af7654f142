"""Write chosen fields of JSONL files as plain-text documents separated by blank lines.

Recipes use it to pretrain on both sides of a task's training pairs (German and English, dialogue
and summary) before fine-tuning on the pairs; `llmkit clean --doc-per blank-line` reads the result.

    python recipes/jsonl_text.py OUT.txt FILE.jsonl FIELD [FIELD ...]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    out, source, fields = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    parts = []
    with open(source, encoding="utf-8") as rows:
        for line in rows:
            record = json.loads(line)
            for field in fields:
                text = re.sub(r"\n\s*\n", "\n", str(record[field]).strip())  # a blank line ends a document
                if text:
                    parts.append(text + "\n\n")
    written = "".join(parts)
    # (a file of that name that is not this text is a user's: a recipe's stages never write over one, nor does this)
    if out.exists() and (not out.is_file() or out.read_text(encoding="utf-8", errors="replace") != written):
        sys.exit(f"error: {out} exists and is not the text this recipe writes there; move it away, or give the recipe "
                 "another OUT")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(written, encoding="utf-8")


if __name__ == "__main__":
    main()
