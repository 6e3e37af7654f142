"""`python -m llmkit ...`: the same as the `llmkit` command (for machines where it is not installed)."""

from llmkit.cli import main

main()
