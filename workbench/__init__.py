"""gpu-workbench core: store, daemon, scheduler, runner and CLI; no Textual, torch or onnxruntime."""

__version__ = "0.1.0"
