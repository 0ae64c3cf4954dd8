"""`python -m bertfit ...` is the same as the `bertfit` command."""

from bertfit.cli import main

raise SystemExit(main())
