"""The command line: one module per command family; `entry` is the program's entry point."""
