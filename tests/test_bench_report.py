"""`make bench`'s report: the last GPU run's section kept on a CPU run, and targets judged
from the figures."""

from bench.__main__ import (
    GPU_END,
    GPU_START,
    gpu_section,
    kept_gpu_section,
    onnx_batching_target,
)


def test_a_cpu_run_keeps_the_last_gpu_section_and_a_gpu_run_replaces_it() -> None:
    fresh = kept_gpu_section("")  # no GPU run yet
    assert fresh[0] == GPU_START
    assert fresh[-1] == GPU_END
    assert "Not measured yet" in "\n".join(fresh)

    row = {"samples_per_s": 100.0, "p50_ms": 1.0, "p99_ms": 2.0}
    measured = {
        "device": "NVIDIA H100",
        "overhead": [
            {"runtime": "onnxruntime", "batch": 1, "in_process": row, "service": row, "ratio": 1.0}
        ],
        "batching": [
            {
                "runtime": "eager",
                "off": row,
                "on": row,
                "throughput_on_vs_off": 4.2,
                "p99_on_vs_off": 1.1,
            }
        ],
        "batching_unbucketed": [],
        "varying": [
            {
                "runtime": "eager",
                "fixed_64_samples_per_s": 10.0,
                "varying_samples_per_s": 5.0,
                "ratio": 0.5,
            }
        ],
        "varying_unbucketed": [],
        "buckets": [
            {
                "runtime": "eager",
                "placement": "cuda:0",
                "buckets": [1, 2],
                "warmup_s": 0.1,
                "load_s": 0.2,
                "device_mb": 12.0,
            }
        ],
    }
    section = "\n".join(gpu_section(measured))
    assert "NVIDIA H100" in section
    assert "**4.20**" in section
    previous = f"# Benchmarks\n\n...\n{section}\n<!-- notes -->\nhand-written"
    assert "\n".join(kept_gpu_section(previous)) == section  # a CPU run keeps it verbatim


def test_the_onnx_batching_target_is_judged_model_by_model() -> None:
    def row(model: str, runtime: str, batching: str, throughput: float, p99: float) -> dict:
        return {
            "model": model,
            "runtime": runtime,
            "batching": batching,
            "throughput_vs_off": throughput,
            "p99_vs_off": p99,
        }

    rows = [
        row("small", "onnxruntime", "off", 1.0, 1.0),
        row("small", "onnxruntime", "on, max_delay 0 ms", 0.9, 0.9),
        row("small", "eager", "on, max_delay 0 ms", 3.0, 0.5),  # eager is not judged here
        row("big", "onnxruntime", "off", 1.0, 1.0),
        row("big", "onnxruntime", "on, max_delay 0 ms", 2.5, 1.4),  # p99 worse: not counted
        row("big", "onnxruntime", "on, max_delay 2 ms", 2.1, 0.4),
    ]
    (line, _) = onnx_batching_target(rows)
    assert "small 0.90x with p99 0.90x (on, max_delay 0 ms): **missed**" in line
    assert "big 2.10x with p99 0.40x (on, max_delay 2 ms): met" in line
    rows[-1]["p99_vs_off"] = 1.2  # no setting keeps p99: the best is shown, and missed
    (line, _) = onnx_batching_target(rows)
    assert "big 2.50x with p99 1.40x (on, max_delay 0 ms): **missed**" in line
