"""onnxruntime against PyTorch latency for the registry's models (linear, mlp, cnn on 64
features, as for 8x8 digits) at batch 1 and 256, as ratios, in one run, exported the way the
export job does it. Usage: python bench/export.py [--runs N] [--threads N] [--tiny]"""

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
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke test: the linear model, 5 runs, nothing written"
    )
    args = parser.parse_args()
    if args.tiny:
        args.runs = 5

    import numpy as np
    import onnxruntime as ort
    import torch

    from jobs.architectures import build
    from jobs.export import export_onnx, latency

    torch.set_num_threads(args.threads)
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="wb-bench-export-"))
    x = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)
    for name in ("linear",) if args.tiny else ("linear", "mlp", "cnn"):
        torch.manual_seed(0)
        model = build(name, 64, 10, {"hidden": [64, 64]}).eval()
        path = folder / f"{name}.onnx"
        export_onnx(model, torch.from_numpy(x[:8]), path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        timings = latency(model, session, x, {"features": x}, args.runs)
        threads = timings["threads"]
        assert threads["torch"] == threads["onnxruntime"] == args.threads, threads
        for batch in ("batch_1", "batch_256"):
            row = timings[batch]
            ort_t, torch_t = row["onnxruntime"], row["torch"]
            rows.append(
                [
                    f"{name}, {batch.replace('_', ' ')}",
                    f"{ort_t['median_ms']:.3f} ms (p10-p90 {ort_t['p10_ms']:.3f}-{ort_t['p90_ms']:.3f},"
                    f" p99 {ort_t['p99_ms']:.3f})",
                    f"PyTorch {torch_t['median_ms']:.3f} ms (p10-p90 {torch_t['p10_ms']:.3f}-"
                    f"{torch_t['p90_ms']:.3f}, p99 {torch_t['p99_ms']:.3f})",
                    f"{row['ort_over_torch_median']:.2f}x",
                ]
            )
    text = table(["model", "onnxruntime median", "baseline (same run)", "ort / torch"], rows)
    note = (
        f"\n\nCPU, {args.threads} intra-op threads on both sides (torch.set_num_threads;"
        " onnxruntime SessionOptions.intra_op_num_threads, inter_op 1), float32, median of"
        f" {args.runs} timed calls after one warm-up with the p10-p90 spread; models exported with"
        " the dynamo exporter and a symbolic batch axis, as the export job does. Below 1.0"
        " onnxruntime is faster. The machine was shared with other developers' work."
    )
    print(text + note)
    if not args.tiny:
        write_section(
            "export",
            f"python bench/export.py --runs {args.runs} --threads {args.threads}",
            text + note,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
