"""`make bench`'s report keeps the last GPU run's section when it runs without CUDA."""

from bench.__main__ import GPU_END, GPU_START, gpu_section, kept_gpu_section


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
