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
    out, source, fields = sys.argv[1], sys.argv[2], sys.argv[3:]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(source, encoding="utf-8") as rows, open(out, "w", encoding="utf-8") as handle:
        for line in rows:
            record = json.loads(line)
            for field in fields:
                text = re.sub(r"\n\s*\n", "\n", str(record[field]).strip())  # a blank line ends a document
                if text:
                    handle.write(text + "\n\n")


if __name__ == "__main__":
    main()
