"""`make bench`: runs every benchmark side by side in one run, prints the figures and writes
them, with the method, to BENCHMARKS.md."""

import argparse
import datetime
import tempfile
from pathlib import Path

import torch

from bench import fuzz_memory, gpu, request_path, serving, shared_memory, startup, training
from bench.harness import PeakMemory, bare_torch, machine, server_process
from torchwire.client import Client

ROOT = Path(__file__).resolve().parent.parent
GPU_START, GPU_END = "<!-- gpu -->", "<!-- /gpu -->"
"""Around the GPU section: a run without CUDA keeps the last GPU run's section as it was."""


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def onnx_batching_target(batching: list[dict]) -> list[str]:
    """The request path's batching target for ONNX Runtime, model by model: the better
    batching-on setting (among those whose p99 is no worse than off's, when there are any)
    against off."""
    verdicts = []
    for model in dict.fromkeys(b["model"] for b in batching):
        ons = [
            b
            for b in batching
            if b["model"] == model and b["runtime"] == "onnxruntime" and b["batching"] != "off"
        ]
        if not ons:
            continue
        fair = [b for b in ons if b["p99_vs_off"] <= 1.0]
        best = max(fair or ons, key=lambda b: b["throughput_vs_off"])
        ok = best["throughput_vs_off"] >= 2 and best["p99_vs_off"] <= 1.0
        verdicts.append(
            f"{model} {best['throughput_vs_off']:.2f}x with p99 {best['p99_vs_off']:.2f}x "
            f"({best['batching']}): {_met(ok)}"
        )
    if not verdicts:
        return []
    return [
        "Target for ONNX Runtime: batching on >= 2x off with p99 no worse, model by model: "
        + "; ".join(verdicts)
        + ". Where a model's run is a small share of a request, merging has little to save "
        "(notes below).",
        "",
    ]


def measure(seconds: float) -> dict:
    results: dict = {"machine": machine()}
    results["bare_torch_s"], results["bare_torch_mb"] = bare_torch()
    with tempfile.TemporaryDirectory(prefix="torchwire-bench-") as tmp:
        store = Path(tmp) / "store"
        with server_process(store) as (process, address, _), Client(address) as client:
            client.wait_ready()
            with PeakMemory(process.pid) as memory:
                serving.prepare(client)
            results["prepare_memory"] = memory
            with PeakMemory(process.pid) as memory:
                results["overhead"] = serving.overhead(client, store, seconds)
            results["overhead_memory"] = memory
            with PeakMemory(process.pid) as memory:
                results["batching"] = serving.batching(client, 2 * seconds)
            results["batching_memory"] = memory
            with PeakMemory(process.pid) as memory:
                results["runtimes"] = serving.runtimes(client, seconds)
            results["runtimes_memory"] = memory
            with PeakMemory(process.pid) as memory:
                results["training_service"] = training.service(client)
            results["training_memory"] = memory
            results["distributed"] = training.distributed(client)
        results["request_path"] = request_path.run(store, seconds, request_path.VARIANTS)
        results["shared_memory"] = shared_memory.run(seconds)
        results["training_classic"] = training.classic_loop()
        results["cold"] = startup.cold_start(store, "mlp")
        results["memory"] = startup.idle_memory(store, "mlp")
    results["hostile"] = fuzz_memory.run(fuzz_memory.parse_args([]))
    if torch.cuda.is_available():
        with tempfile.TemporaryDirectory(prefix="torchwire-gpu-bench-") as tmp:
            results["gpu"] = gpu.run(Path(tmp) / "store", seconds)
    return results


def gpu_section(g: dict) -> list[str]:
    """Section 9, from a run on CUDA."""
    lines = [
        GPU_START,
        "## 9. GPU: resnet18 on 3x32x32 (CUDA)",
        "",
        f"Measured by `make bench` on {datetime.date.today()} on {g['device']} "
        "(`bench/gpu.py`). The server runs with its CUDA defaults (fixed-shape buckets 1, 2, "
        "4 ... 64; TF32 off); the last columns come from a second server on the same store "
        "with `--bucket-sizes off`.",
        "",
    ]
    rows = [
        [
            o["runtime"],
            str(o["batch"]),
            f"{o['in_process']['samples_per_s']:,.0f}",
            f"{o['service']['samples_per_s']:,.0f}",
            f"**{o['ratio']:.2f}**",
            f"{o['in_process']['p50_ms']:.2f} / {o['service']['p50_ms']:.2f}",
        ]
        for o in g["overhead"]
    ]
    lines += _table(
        ["runtime", "batch", "in-process samples/s", "Predict samples/s", "ratio", "p50 ms"],
        rows,
    )
    lines += ["", f"{gpu.CONCURRENCY} concurrent batch-1 clients, batching on vs off:", ""]
    rows = []
    for label, key in (("buckets", "batching"), ("no buckets", "batching_unbucketed")):
        for b in g[key]:
            rows.append(
                [
                    b["runtime"],
                    label,
                    f"{b['off']['samples_per_s']:,.0f}",
                    f"{b['on']['samples_per_s']:,.0f}",
                    f"**{b['throughput_on_vs_off']:.2f}**",
                    f"{b['p99_on_vs_off']:.2f}",
                ]
            )
    lines += _table(
        ["runtime", "", "off samples/s", "on samples/s", "on / off", "p99 on / off"], rows
    )
    lines += ["", "One client, batch sizes drawn from 1..64 against a fixed 64, per sample:", ""]
    rows = [
        [
            v["runtime"],
            label,
            f"{v['fixed_64_samples_per_s']:,.0f}",
            f"{v['varying_samples_per_s']:,.0f}",
            f"**{v['ratio']:.3f}**",
        ]
        for label, key in (("buckets", "varying"), ("no buckets", "varying_unbucketed"))
        for v in g[key]
    ]
    lines += _table(["runtime", "", "fixed 64", "varying 1..64", "ratio"], rows)
    lines += ["", "Loaded runtimes as GetModel shows them:", ""]
    rows = [
        [
            b["runtime"],
            b["placement"],
            ",".join(map(str, b["buckets"])),
            f"{b['warmup_s']:.2f}",
            f"{b['load_s']:.2f}",
            f"{b['device_mb']:.0f}",
        ]
        for b in g["buckets"]
    ]
    lines += _table(
        ["runtime", "placement", "buckets", "warm-up s", "load s", "bucket device MiB"], rows
    )
    return [*lines, "", GPU_END]


def kept_gpu_section(previous: str) -> list[str]:
    """The GPU section of the last report, or a line saying there has been no GPU run."""
    if GPU_START in previous and GPU_END in previous:
        kept = previous.split(GPU_START, 1)[1].split(GPU_END, 1)[0]
        return [GPU_START + kept + GPU_END]
    return [
        GPU_START,
        "## 9. GPU: resnet18 on 3x32x32 (CUDA)",
        "",
        "Not measured yet: no `make bench` has run on a machine with CUDA.",
        GPU_END,
    ]


def report(r: dict, seconds: float, previous: str = "") -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` on {datetime.date.today()}: {r['machine']}.",
        "",
        "Every figure is a ratio of two things measured side by side in the same run, on the "
        "same shared machine; absolute times are given only as context. The server is a real "
        "`torchwire serve` process on 127.0.0.1, and the client is the Python client in the "
        f"benchmark process. Each timed loop runs about {seconds:g} s after 3 warm-up calls.",
        "",
        "## 1. Service overhead: Predict through gRPC vs the same runtime in-process",
        "",
        "ONNX Runtime (the runtime the server picks once a model is exported) opened in the "
        "benchmark process from the server's own files, against `client.predict(..., "
        "runtime='onnxruntime', outputs=['raw'])`: encoding, the gRPC round trip, decoding, "
        "validation and the batcher included. One request at a time.",
        "",
    ]
    rows = [
        [
            o["model"],
            str(o["batch"]),
            f"{o['in_process']['samples_per_s']:,.0f}",
            f"{o['service']['samples_per_s']:,.0f}",
            f"**{o['ratio']:.2f}**",
            f"{o['in_process']['p50_ms']:.3f} / {o['in_process']['p99_ms']:.3f}",
            f"{o['service']['p50_ms']:.3f} / {o['service']['p99_ms']:.3f}",
            f"{o['p50_overhead_ms']:.3f}",
            f"{o['bare_grpc']['p50_ms']:.3f}",
            f"{o['own_p50_ms']:.3f}",
        ]
        for o in r["overhead"]
    ]
    lines += _table(
        [
            "model",
            "batch",
            "in-process samples/s",
            "service samples/s",
            "service / in-process",
            "in-process p50 / p99 ms",
            "service p50 / p99 ms",
            "p50 overhead ms",
            "bare gRPC p50 ms",
            "torchwire's own p50 ms",
        ],
        rows,
    )
    lines += [
        "",
        "`bare gRPC` is the same request and response sizes through a gRPC Python "
        "server with the same thread pool and options whose handler does nothing "
        "(`bench/echo.py`): the floor any Python gRPC service pays. `torchwire's own` is "
        "the p50 overhead minus that floor: decoding, validation, the cache, the batcher, "
        "post-processing and encoding.",
    ]
    at64 = [o for o in r["overhead"] if o["batch"] == 64]
    at1 = [o for o in r["overhead"] if o["batch"] == 1]
    ratios = ", ".join(f"{o['model']} {o['ratio']:.2f}" for o in at64)
    overheads = ", ".join(f"{o['model']} {o['p50_overhead_ms']:.3f} ms" for o in at1)
    lines += [
        "",
        f"Target: ratio >= 0.85 at batch 64 on ONNX Runtime: "
        f"{_met(all(o['ratio'] >= 0.85 for o in at64))} ({ratios}). "
        f"p50 overhead < 0.5 ms at batch 1: "
        f"{_met(all(o['p50_overhead_ms'] < 0.5 for o in at1))} ({overheads}).",
        "",
    ]

    lines += [
        "## 2. Dynamic batching: 32 concurrent clients sending batch-1 requests",
        "",
        "32 asyncio clients on one grpc.aio channel, each sending its next request as "
        "soon as the previous answer arrives, for "
        f"{2 * seconds:g} s per setting; max_batch_size 64. `mean run` is the mean size "
        "of the model runs that served the requests (PredictResponse.batch_sizes).",
        "",
    ]
    rows = [
        [
            b["model"],
            b["runtime"],
            b["batching"],
            f"{b['samples_per_s']:,.0f}",
            f"**{b['throughput_vs_off']:.2f}**",
            f"{b['p50_ms']:.2f}",
            f"{b['p99_ms']:.2f}",
            f"{b['p99_vs_off']:.2f}",
            f"{b['mean_run_size']:.1f}",
        ]
        for b in r["batching"]
    ]
    lines += _table(
        [
            "model",
            "runtime",
            "batching",
            "samples/s",
            "throughput vs off",
            "p50 ms",
            "p99 ms",
            "p99 vs off",
            "mean run",
        ],
        rows,
    )
    best = max(
        (b for b in r["batching"] if b["batching"] != "off"), key=lambda b: b["throughput_vs_off"]
    )
    lines += [
        "",
        f"Target: throughput >= 4x with batching on, p99 no worse than 2x: "
        f"{_met(best['throughput_vs_off'] >= 4 and best['p99_vs_off'] <= 2)} (best: "
        f"{best['model']}/{best['runtime']} {best['batching']}: "
        f"{best['throughput_vs_off']:.2f}x, p99 {best['p99_vs_off']:.2f}x).",
        "",
        *onnx_batching_target(r["batching"]),
    ]

    lines += ["## 3. Runtimes: the CNN at batch 64 through Predict", ""]
    rows = [
        [
            t["runtime"],
            f"{t['samples_per_s']:,.0f}",
            f"**{t['vs_eager']:.2f}**",
            f"{t['p50_ms']:.3f}",
            f"{t['p99_ms']:.3f}",
        ]
        for t in r["runtimes"]
    ]
    lines += _table(["runtime", "samples/s", "vs eager", "p50 ms", "p99 ms"], rows)
    onnx = r["runtimes"][-1]["vs_eager"]
    lines += ["", f"Target: ONNX Runtime >= 3x eager: {_met(onnx >= 3)} ({onnx:.2f}x).", ""]

    svc, classic = r["training_service"], r["training_classic"]
    speedup = svc["samples_per_s"] / classic["samples_per_s"]
    lines += [
        "## 4. Training: a torchwire job vs the classic tutorial loop",
        "",
        f"The MLP on the digits' 1,437 training images, {training.EPOCHS} epochs, batch "
        f"{training.BATCH}, Adam lr {training.LR}, shuffled, no validation split, on the "
        "CPU. The classic loop: a `Dataset` with per-sample `__getitem__`, "
        "`DataLoader(batch_size, shuffle=True)`, zero_grad/forward/loss/backward/step. "
        "The job's figure is its own per-epoch training throughput (what the job reports "
        "in its epoch_end events); its wall time also includes starting the worker "
        "process, loading the data and checkpointing every epoch.",
        "",
    ]
    lines += _table(
        ["", "samples/s", "training s", "held-out accuracy"],
        [
            [
                "classic loop",
                f"{classic['samples_per_s']:,.0f}",
                f"{classic['seconds']:.2f}",
                f"{classic['accuracy']:.4f}",
            ],
            [
                "torchwire job",
                f"{svc['samples_per_s']:,.0f}",
                f"{svc['seconds']:.2f} (job wall {svc['job_wall_s']:.2f})",
                f"{svc['accuracy']:.4f}",
            ],
        ],
    )
    gap = abs(svc["accuracy"] - classic["accuracy"])
    lines += [
        "",
        f"Speed-up **{speedup:.2f}x**; accuracy difference {100 * gap:.2f} points. "
        f"Target: >= 1.5x with accuracy within 1 point: "
        f"{_met(speedup >= 1.5 and gap <= 0.01)}.",
        "",
    ]

    single, ddp = r["distributed"]["single"], r["distributed"]["ddp"]
    ratio = ddp["samples_per_s"] / single["samples_per_s"]
    lines += [
        "## 4b. Distributed training: DDP processes vs one process",
        "",
        f"The small CNN (channels 32, 64) on the digits, 5 epochs, as one process with batch "
        f"{training.BATCH}, and as {training.DDP_PROCESSES} DistributedDataParallel processes "
        f"(gloo, CPU) with batch {training.BATCH // training.DDP_PROCESSES} each: the same "
        "updates. samples/s is the whole job's (summed over the ranks); the job wall time "
        "includes the launcher starting and importing torch in every process.",
        "",
    ]
    lines += _table(
        ["", "samples/s", "training s", "job wall s", "held-out accuracy"],
        [
            [
                name,
                f"{m['samples_per_s']:,.0f}",
                f"{m['seconds']:.2f}",
                f"{m['job_wall_s']:.2f}",
                f"{m['accuracy']:.4f}",
            ]
            for name, m in (("1 process", single), (f"{training.DDP_PROCESSES} DDP processes", ddp))
        ],
    )
    lines += [
        "",
        f"Throughput ratio DDP / one process: **{ratio:.2f}x** on {r['machine']}.",
        "",
    ]

    cold, bare = r["cold"], r["bare_torch_s"]
    lines += [
        "## 5. Cold start",
        "",
        "From launching `torchwire serve` (a fresh process on an existing store) until "
        "health answers SERVING, and until the first Predict of a stored, exported model "
        'has answered; median of 3, as ratios to a bare `python -c "import torch"` '
        f"({bare:.2f} s here).",
        "",
    ]
    lines += _table(
        ["", "ratio to import torch", "seconds"],
        [
            ["SERVING", f"**{cold['serving_s'] / bare:.2f}**", f"{cold['serving_s']:.2f}"],
            [
                "first Predict",
                f"**{cold['first_predict_s'] / bare:.2f}**",
                f"{cold['first_predict_s']:.2f}",
            ],
        ],
    )

    mem, bare_mb = r["memory"], r["bare_torch_mb"]
    idle_ratio = mem["idle_mb"] / bare_mb
    growth = mem["after_rounds_mb"][-1] - mem["after_rounds_mb"][0]
    lines += [
        "",
        "## 6. Memory",
        "",
        f"Resident memory as a ratio to a bare `import torch` process ({bare_mb:.0f} MiB here).",
        "",
    ]
    rows = [
        [
            label,
            f"{m.server_mb / bare_mb:.2f} ({m.server_mb:.0f} MiB)",
            f"{m.worker_mb / bare_mb:.2f} ({m.worker_mb:.0f} MiB)" if m.worker_mb else "-",
        ]
        for label, m in (
            ("training and exporting the three models", r["prepare_memory"]),
            ("benchmark 1 (overhead)", r["overhead_memory"]),
            ("benchmark 2 (batching)", r["batching_memory"]),
            ("benchmark 3 (runtimes)", r["runtimes_memory"]),
            ("benchmark 4 (training job)", r["training_memory"]),
        )
    ]
    lines += _table(["during", "server peak RSS", "worker peak RSS"], rows)
    rounds = ", ".join(f"{m:.0f}" for m in mem["after_rounds_mb"])
    lines += [
        "",
        f"A fresh server holding one loaded model (the MLP in ONNX Runtime): "
        f"**{idle_ratio:.2f}x** ({mem['idle_mb']:.0f} MiB). After each of 3 rounds of "
        f"2,000 Predicts of batch 16: {rounds} MiB (growth {growth:+.1f} MiB from the "
        f"first round to the last). Target: idle <= 1.5x: {_met(idle_ratio <= 1.5)}; "
        f"no growth across rounds: {_met(growth <= 2)}.",
        "",
    ]
    hostile = r["hostile"]
    codes = ", ".join(f"{code} {n}" for code, n in hostile["codes"].most_common())
    lines += [
        f"Under {sum(hostile['codes'].values()):,} hostile requests to every RPC "
        f"(`python -m bench.fuzz_memory`: raw random bytes, random messages, 10% large "
        f"tensors; answers: {codes}; {hostile['tracebacks']} tracebacks logged), the server's "
        f"RSS went from {hostile['warm_mb']:.0f} MiB after the warm-up to "
        f"{hostile['end_mb']:.0f} MiB: **{hostile['ratio']:.3f}x**. "
        f"Target <= 1.10x: {_met(hostile['ratio'] <= 1.10)}.",
        "",
    ]
    lines += request_path_report(r["request_path"], seconds)
    lines += shared_memory_report(r["shared_memory"], seconds)
    lines += gpu_section(r["gpu"]) if "gpu" in r else kept_gpu_section(previous)
    return "\n".join(lines)


def request_path_report(r: dict, seconds: float) -> list[str]:
    """Section 7: the request path against the baseline commit and a bare gRPC echo."""
    echo = r["echo"]
    base_label = next((label for label in r["servers"] if label.startswith("baseline")), None)
    base = r["servers"].get(base_label) if base_label else None
    lines = [
        "",
        "## 7. The request path: torchwire's own cost, and many clients",
        "",
        "The MLP (ONNX Runtime) through Predict, loaded by closed-loop clients in a process of "
        "their own (`bench/load.py`: one thread and one connection per client, requests and "
        f"answers kept as bytes), for {seconds:g} s per load. `baseline` is the server of "
        f"commit {r['baseline']}, the last before this work, run from a `git archive` of it "
        "on a copy of the same store; `echo` is a bare gRPC Python server answering the same "
        "bytes (`bench/echo.py`). batch x clients: 1x1 is one client, 1x16 sixteen, 64x4 "
        "four clients sending 64 rows each.",
        "",
    ]
    rows = [
        [
            "bare gRPC echo",
            "-",
            f"{echo['1x1']['p50_ms']:.3f}",
            f"{echo['1x1']['samples_per_s']:,.0f}",
            f"{echo['1x16']['samples_per_s']:,.0f}",
            "-",
            "-",
        ]
    ]
    for label, m in r["servers"].items():
        own = m["1x1"]["p50_ms"] - echo["1x1"]["p50_ms"]
        versus = (
            f"**{m['1x16']['samples_per_s'] / base['1x16']['samples_per_s']:.2f}x**"
            if base
            else "-"
        )
        rows.append(
            [
                label,
                f"**{own:.3f}**",
                f"{m['1x1']['p50_ms']:.3f}",
                f"{m['1x1']['samples_per_s']:,.0f}",
                f"{m['1x16']['samples_per_s']:,.0f} (p50 {m['1x16']['p50_ms']:.1f} ms)",
                versus,
                f"{64 * m['64x4']['samples_per_s']:,.0f}",
            ]
        )
    lines += _table(
        [
            "server",
            "own p50 ms at 1x1 (over echo)",
            "1x1 p50 ms",
            "1x1 calls/s",
            "1x16 calls/s",
            "1x16 vs baseline",
            "64x4 samples/s",
        ],
        rows,
    )
    ours = {k: v for k, v in r["servers"].items() if not k.startswith("baseline")}
    one = ours[next(iter(ours))]
    best_label = max(ours, key=lambda k: ours[k]["1x16"]["samples_per_s"])
    own = one["1x1"]["p50_ms"] - echo["1x1"]["p50_ms"]
    lines += [
        "",
        f"Targets: torchwire's own p50 at batch 1 <= 0.1 ms over the echo: {_met(own <= 0.1)} "
        f"({own:.3f} ms, one process).",
    ]
    if base:
        gain = ours[best_label]["1x16"]["samples_per_s"] / base["1x16"]["samples_per_s"]
        ceiling = echo["1x16"]["samples_per_s"] / base["1x16"]["samples_per_s"]
        lines[-1] += (
            f" 16 clients >= 3x the baseline's throughput: {_met(gain >= 3)} ({gain:.2f}x, "
            f"{best_label}; one bare gRPC Python process answers {ceiling:.2f}x the baseline "
            "under the same load)."
        )
    return lines + ["", *shared_batching_report(r["shared"])]


def shared_batching_report(shared: dict) -> list[str]:
    """Section 7's second part: a slow batched model with frontends, run by the server's one
    batcher or by a batcher in each process."""
    one = shared[next(iter(shared))]
    rows = [
        [
            label,
            f"{m['samples_per_s']:,.0f}",
            f"**{m['samples_per_s'] / one['samples_per_s']:.2f}**",
            f"{m['p50_ms']:.1f}",
            f"{m['p99_ms']:.1f}",
        ]
        for label, m in shared.items()
    ]
    return [
        f"The memory-bound MLP of section 2 (`{request_path.SHARED_MODEL}`, ONNX Runtime, "
        f"batching on) under {request_path.SHARED_CLIENTS} batch-1 clients from `bench/load.py`, "
        "one connection each, so that the kernel spreads them over the processes: with "
        "frontends, its pieces go to the server's one batcher (`--shared-run-ms 0`), or each "
        "process loads and batches it itself (what every model did before).",
        "",
        *_table(["server", "samples/s", "vs 1 process", "p50 ms", "p99 ms"], rows),
        "",
    ]


def shared_memory_report(r: dict, seconds: float) -> list[str]:
    """Section 8: the v2 protocol's system shared memory against plain gRPC."""
    lines = [
        f"## 8. System shared memory: a {r['megabytes']:.1f} MB batch through v2 ModelInfer",
        "",
        f"A batch of {shared_memory.BATCH} float32 images of "
        f"{'x'.join(map(str, shared_memory.SHAPE))} ({r['megabytes']:.1f} MB) through the v2 "
        "protocol's `ModelInfer` (`inference.GRPCInferenceService`), from a client on the same "
        "host, three ways: plain gRPC (the batch in `raw_input_contents`); the input in a "
        "system shared-memory region (`SystemSharedMemoryRegister` of a POSIX shm object), the "
        "output in the response; input and output both in shared memory. The model "
        "(`bench/shared_memory.py`) is a probe that reads every input value and costs little "
        "else, so that the figure is the transport's: the mean of each 56x56 block "
        "(AdaptiveAvgPool2d(4)), then Linear(48, 10), imported as ONNX and run by ONNX Runtime, "
        "on a server of its own with `--max-message-bytes "
        f"{shared_memory.MAX_MESSAGE_BYTES}`. Every timed call starts from the batch as a "
        "NumPy array in the client and ends with the output as one: plain gRPC pays "
        "`tobytes()` and the request's encoding, the shared-memory ways pay the memcpy of the "
        "batch into the region, as a client producing new data would. "
        f"{r['rounds']} interleaved rounds (about {len(r['rows']) * seconds:g} s, at least "
        f"{shared_memory.MIN_ROUNDS}) after 3 warm-up rounds, each way once per round in a "
        "rotated order; the three ways' outputs are checked equal.",
        "",
    ]
    rows = [
        [
            row["variant"],
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['samples_per_s']:,.0f}",
            f"**{row['vs_plain']:.3f}**",
        ]
        for row in r["rows"]
    ]
    lines += _table(["", "p50 ms", "p99 ms", "samples/s", "p50 / plain gRPC"], rows)
    plain, *shm = r["rows"]
    speedups = " and ".join(
        f"{plain['p50_ms'] / row['p50_ms']:.1f}x ({row['variant']})" for row in shm
    )
    lines += [
        "",
        f"Shared memory answers {speedups} faster than plain gRPC at p50. Context from the "
        "same run, medians unless said: the memcpy of the batch into the region "
        f"{r['copy_ms']:.1f} ms (in the shared-memory timings); `tobytes()` "
        f"{r['tobytes_ms']:.1f} ms (in the plain timing); the probe's run in ONNX Runtime as "
        "the server counts it (ModelStatistics' compute_infer over the timed rounds, a mean) "
        f"{r['compute_ms']:.1f} ms; the plain request's bytes, encoded once beforehand, "
        "through a bare gRPC Python echo server (`bench/echo.py`) "
        f"{r['bare_grpc_p50_ms']:.1f} ms.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each timed loop")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    previous = args.out.read_text() if args.out.exists() else ""
    text = report(measure(args.seconds), args.seconds, previous)
    print(text)
    notes = previous.split("<!-- notes -->", 1)[1] if "<!-- notes -->" in previous else "\n"
    args.out.write_text(text + "\n<!-- notes -->" + notes)


if __name__ == "__main__":
    main()
