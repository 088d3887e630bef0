"""`python -m medtriad` (also what torchrun launches)."""

from medtriad.cli import main

main()
