"""`python -m codecflow ...`: the `codecflow` command."""

from codecflow.cli import main

raise SystemExit(main())
