"""`python -m bot` runs the teambot command (as the `teambot` script does)."""

from bot.cli import main

main()
