"""The Textual TUI of gpu-workbench: Dashboard, Queue and the job detail view."""
