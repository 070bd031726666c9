"""``python -m squiggles`` runs the command line."""

from squiggles.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
