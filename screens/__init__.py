"""The Textual TUI of gpu-workbench: Dashboard, Queue, Data, Runs and Models screens."""
