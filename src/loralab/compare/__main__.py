"""`python -m loralab.compare`: the same as `loralab-compare`."""

from loralab.compare import main

main()
