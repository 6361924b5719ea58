"""Entry point for `python -m workbench`."""

from workbench.cli.entry import main

raise SystemExit(main())
