"""`python -m batch_parse.cli`: the `batch-parse` command where its console script is not installed."""

from batch_parse.cli import main

main()
