"""``python -m dl4 ...``: the same as the ``dl4`` console script."""

from dl4.console import main

main()
