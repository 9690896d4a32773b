"""`python -m loralab`: the same as `loralab-train`."""

from loralab.cli import main

main()
