"""onnxruntime against PyTorch latency for the registry's models (linear, mlp, cnn on 64
features, as for 8x8 digits) at batch 1 and 256, as ratios, in one run, exported the way the
export job does it. Usage: python bench/export.py [--runs N]"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [
    p for p in sys.path if Path(p or ".").resolve() != HERE
]  # bench/queue.py shadows queue
sys.path.append(str(HERE))
from _results import table, write_section  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="timed calls per measure")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    from jobs.architectures import build
    from jobs.export import export_onnx, latency

    torch.set_num_threads(2)
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="wb-bench-export-"))
    x = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)
    for name in ("linear", "mlp", "cnn"):
        torch.manual_seed(0)
        model = build(name, 64, 10, {"hidden": [64, 64]}).eval()
        path = folder / f"{name}.onnx"
        export_onnx(model, torch.from_numpy(x[:8]), path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        timings = latency(model, session, x, args.runs)
        for batch in ("batch_1", "batch_256"):
            row = timings[batch]
            rows.append(
                [
                    f"{name}, {batch.replace('_', ' ')}",
                    f"{row['onnxruntime']['median_ms']:.3f} ms (p99 {row['onnxruntime']['p99_ms']:.3f})",
                    f"PyTorch {row['torch']['median_ms']:.3f} ms (p99 {row['torch']['p99_ms']:.3f})",
                    f"{row['ort_over_torch_median']:.2f}x",
                ]
            )
    text = table(["model", "onnxruntime median", "baseline (same run)", "ort / torch"], rows)
    note = (
        "\n\nCPU, 2 threads on both sides, float32; models exported with the dynamo exporter and a"
        " symbolic batch axis, as the export job does. Below 1.0 onnxruntime is faster."
    )
    print(text + note)
    write_section("export", f"python bench/export.py --runs {args.runs}", text + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
