"""The command line: one module per command family."""

from workbench.cli.main import main

__all__ = ["main"]
