"""Model versions in use: loaded once per runtime through the cache, batched, exported,
evaluated and deleted."""

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from torchwire.service.app.prediction import (
    V1_FIELDS,
    InputFields,
    LoadedRuntime,
    PendingPrediction,
    ServedRuntime,
    check_request,
)
from torchwire.service.app.runner import RemoteRuntime, Runner
from torchwire.service.app.statistics import InferenceStatistics
from torchwire.service.core.batching import Batcher, BatchingConfig, RunObserver, timed_run
from torchwire.service.core.buckets import MAX_BUCKETS, BucketedRuntime, powers_of_two
from torchwire.service.core.cache import ModelCache
from torchwire.service.core.checkpoint import load_model
from torchwire.service.core.datasets import CLASSIFICATION
from torchwire.service.core.device import choose_device
from torchwire.service.core.evaluation import EvaluationResult, evaluate
from torchwire.service.core.export import export_model
from torchwire.service.core.formats import (
    EAGER,
    FILE_NAMES,
    FORMAT_OF,
    ONNXRUNTIME,
    RUNTIMES,
    runtimes_of,
)
from torchwire.service.core.loaders import eval_loader
from torchwire.service.core.pipeline import prepare
from torchwire.service.core.records import ModelVersionRecord
from torchwire.service.core.runtimes import (
    DEFAULT_OPTIONS,
    IsolatedTorchScript,
    OnnxRuntime,
    Runtime,
    RuntimeOptions,
    TorchRuntime,
    apply_tf32,
    as_module,
    load_torchscript,
)
from torchwire.service.core.sources import FileSource
from torchwire.service.core.transforms import preprocess_images
from torchwire.service.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    counted,
)
from torchwire.service.store import Store
from torchwire.service.store.versions import MissingArtifact


@dataclass(frozen=True)
class BatchingInForce:
    """A model's batching as the API shows it."""

    config: BatchingConfig
    """With the bucket sizes in force (a tuple; empty: no padding)."""
    server_default: bool
    """No setting of the model's own: the server's defaults apply."""
    own_bucket_sizes: bool
    """The bucket sizes are the model's own, not the server's `--bucket-sizes`."""


class ModelService:
    """Answers Predict, Evaluate and Export for registered model versions.

    Args:
        store: where versions, artifacts and datasets are registered.
        max_loaded_bytes: memory bound of the LRU cache of loaded runtimes.
        default_batching: batching for models without a setting of their own.
        options: how runtimes run (threads, CUDA provider settings, precision, graphs).
        bucket_sizes: "auto" (powers of two up to a model's max_batch_size on CUDA, none on
            the CPU), or the sizes (empty: none): the server's default for models whose
            batching names none.
        max_predict_rows: most samples one request may carry (RESOURCE_EXHAUSTED beyond).
        shared_run_s: with frontend processes, the one-row run time from which a batched
            model on the CPU runs only here (`runs_for_frontends`).
        run_observer: for a model and a runtime, what to tell the size and time of each of
            its runs (for metrics); asked once per loaded runtime.
    """

    def __init__(
        self,
        store: Store,
        max_loaded_bytes: int,
        default_batching: BatchingConfig,
        options: RuntimeOptions = DEFAULT_OPTIONS,
        bucket_sizes: tuple[int, ...] | str = "auto",
        max_predict_rows: int = 65536,
        shared_run_s: float = 0.0005,
        run_observer: Callable[[str, str], RunObserver] = (
            lambda model, runtime: lambda rows, seconds: None
        ),
    ) -> None:
        self.store = store
        self.device = choose_device("auto")
        self.default_batching = default_batching
        self.options = options
        self.bucket_sizes = bucket_sizes
        if self.device.type == "cuda":
            apply_tf32(options)
        self.max_predict_rows = max_predict_rows
        self.run_observer = run_observer
        self.statistics = InferenceStatistics()
        self.cache: ModelCache[ServedRuntime] = ModelCache(
            max_loaded_bytes, self._load, lambda s: s.runtime.size_bytes(), ServedRuntime.close
        )
        self._preferred: dict[tuple[str, int], str] = {}
        self._export_lock = threading.Lock()
        self._closed = False
        self.on_forget: Callable[[str, int], None] = lambda name, version: None
        """Told (model, version or 0 for all) when loaded runtimes become stale: frontend
        processes drop theirs too."""
        self.shared_run_s = shared_run_s
        self.runner: Runner | None = None
        """In a frontend process, its link to the server: models with batching on run
        there, in the server's batcher (`app.runner`), instead of loading here."""

    # ---------------------------------------------------------------- loading

    def _open(self, record: ModelVersionRecord, runtime_name: str) -> Runtime:
        if runtime_name == EAGER:
            module, _ = load_model(self.store.versions.verified_checkpoint(record), self.device)
            return TorchRuntime(EAGER, module, self.device, self.options)
        artifact, path = self.store.versions.artifact(record, FORMAT_OF[runtime_name])
        if runtime_name == ONNXRUNTIME:
            return OnnxRuntime(path, self.device, self.options)
        if artifact.get("imported"):  # not ours: its code runs in a child process
            label = f"the TorchScript process of {record.name!r} v{record.version}"
            return IsolatedTorchScript(path, self.device, label)
        return load_torchscript(path, self.device, self.options)

    def _load(self, key: tuple[str, int, str]) -> ServedRuntime:
        if self._closed:
            raise Unavailable("the server is stopping")
        name, version, runtime_name = key
        record = self.store.versions.get(name, version)
        meta = record.metadata
        started = time.perf_counter()
        batching = self.batching(name)
        if batching.enabled and self.runner is not None:
            remote = self.runner.open(name, record.version, runtime_name, batching)
            if remote is not None:
                return ServedRuntime(record, remote, remote.batcher)
        opened = self._open(record, runtime_name)
        runtime: Runtime | BucketedRuntime = opened
        template = np.zeros((1, *meta.input_shape), meta.input_dtype)
        try:
            if batching.bucket_sizes:
                free = (
                    (lambda: torch.cuda.mem_get_info(self.device)[0])
                    if self.device.type == "cuda"
                    else None
                )
                runtime = BucketedRuntime(opened, batching.bucket_sizes, template, free)
            else:
                opened.run(template)  # warm up
            # The best of three: one preempted run must not move a fast model to the server.
            one_row = min(timed_run(runtime.run, template).seconds for _ in range(3))
        except BaseException:
            opened.close()  # an imported TorchScript's child process goes too
            raise
        load_seconds = time.perf_counter() - started
        observers = (
            self.run_observer(name, runtime_name),
            self.statistics.run_observer(name, record.version),
        )

        def observe(rows: int, seconds: float) -> None:
            for observer in observers:
                observer(rows, seconds)

        batcher = (
            Batcher(runtime.run, batching, f"{name}-{version}-{runtime_name}", observe)
            if batching.enabled
            else None
        )
        return ServedRuntime(record, runtime, batcher, observe, load_seconds, one_row)

    def runtime_for(self, name: str, version: int, requested: str) -> str:
        """The named runtime, or the fastest one this version has an export for."""
        if requested:
            if requested not in RUNTIMES:
                raise InvalidArgument.field("runtime", requested, f"must be one of {RUNTIMES}")
            return requested
        key = (name, version)
        if key not in self._preferred:
            record = self.store.versions.get(name, version)
            formats = self.store.versions.artifacts(record)
            self._preferred[key] = runtimes_of(bool(record.checkpoint), formats)[0]
        return self._preferred[key]

    def served(self, name: str, version: int, runtime: str = "") -> ServedRuntime:
        """The loaded runtime; after the first request, a cache hit without reading metadata."""
        number = self.store.versions.resolve(name, version)
        runtime = self.runtime_for(name, number, runtime)
        try:
            return self.cache.get((name, number, runtime))
        except MissingArtifact as err:
            raise FailedPrecondition(f"runtime={runtime!r}: {err.message}") from err

    def runs_for_frontends(self, served: ServedRuntime) -> bool:
        """Whether frontend processes send this batched runtime's pieces here instead of
        loading it themselves: on a GPU always (one process owns the device, and batches
        for all), on the CPU when one row's run costs at least `shared_run_s` (a faster
        model's run costs less than the trip to this process and back, about 0.2 ms of CPU
        on the 2-core bench machine)."""
        return self.device.type != "cpu" or served.one_row_seconds >= self.shared_run_s

    def loaded_here(self) -> int:
        """Runtimes loaded in this process (a frontend's batched models run in the server)."""
        return sum(not isinstance(s.runtime, RemoteRuntime) for s in self.cache.values())

    def loaded_bytes(self) -> dict[tuple[str, int], int]:
        """(model, version) -> bytes its loaded runtimes hold."""
        held: dict[tuple[str, int], int] = {}
        for served in self.cache.values():
            key = (served.record.name, served.record.version)
            held[key] = held.get(key, 0) + served.runtime.size_bytes()
        return held

    def forget(self, name: str, version: int = 0) -> None:
        """Drops loaded runtimes and runtime choices of a model (one version, or all)."""

        def matches(key: Any) -> bool:
            return key[0] == name and (not version or key[1] == version)

        for key in [k for k in self._preferred if matches(k)]:
            self._preferred.pop(key, None)
        self.cache.evict(matches)
        self.on_forget(name, version)

    # -------------------------------------------------------------- inference

    def decode_images(
        self,
        name: str,
        version: int,
        images: list[bytes],
        runtime: str = "",
        field: str = "images",
    ) -> np.ndarray:
        """Encoded images as the batch the version takes: decoded to its image mode and put
        through its evaluation transforms. The version's metadata comes from the loaded
        runtime that will run the batch: no registry read per request.

        Raises:
            NotFound: the model or version does not exist.
            InvalidArgument: the version was not trained on images, or an image is bad
                (`field` names the request's list of images).
        """
        if len(images) > self.max_predict_rows:
            raise ResourceExhausted(
                f"images has {len(images)} entries; max_predict_rows={self.max_predict_rows}"
            )
        record = self.served(name, version, runtime).record
        meta = record.metadata
        if not meta.image_mode:
            raise InvalidArgument.field(
                "images",
                counted(len(images), "image"),
                f"model {name!r} v{record.version} was trained on tensors; send inputs",
            )
        return preprocess_images(
            images, meta.image_mode, meta.eval_transforms, meta.input_shape, field
        )

    def submit(
        self,
        name: str,
        version: int,
        inputs: np.ndarray,
        outputs: set[str],
        top_k: int,
        runtime: str = "",
        fields: InputFields = V1_FIELDS,
    ) -> PendingPrediction:
        """Validates `inputs` against the version's recorded input and queues them.

        Args:
            name: the model.
            version: its version; 0 for the latest.
            inputs: the batch.
            outputs: a subset of {"raw", "probabilities", "top_k"}; empty means "raw", plus
                "probabilities" and "top_k" for classifiers.
            top_k: classes per sample for "top_k"; 0 means 1.
            runtime: "eager", "torchscript", "onnxruntime", or "" for the fastest available.
            fields: how the caller's protocol names the input's fields in errors.

        Raises:
            NotFound: the model or version does not exist.
            InvalidArgument: dtype or shape differ from the model's input, or an output
                that needs classes was asked of a regression model.
            FailedPrecondition: the named runtime has no export to run.
        """
        if inputs.ndim and len(inputs) > self.max_predict_rows:
            raise ResourceExhausted(
                f"inputs has {len(inputs)} rows; max_predict_rows={self.max_predict_rows}"
            )
        served = self.served(name, version, runtime)
        submitted = time.perf_counter()
        key = (served.record.name, served.record.version)
        try:
            inputs, outputs = check_request(served, inputs, outputs, fields)
            futures = served.submit(inputs)
        except BaseException:
            self.statistics.failed(key, time.perf_counter() - submitted)
            raise
        return PendingPrediction(
            served,
            futures,
            "raw" in outputs,
            "probabilities" in outputs,
            (top_k or 1) if "top_k" in outputs else 0,
            self.statistics,
            submitted,
        )

    def evaluate(
        self,
        name: str,
        version: int,
        dataset: str,
        split: str,
        batch_size: int,
        source: FileSource | None = None,
    ) -> tuple[ModelVersionRecord, EvaluationResult]:
        """Evaluates a version on a dataset split, or on the files of a source, with its
        evaluation transforms and its training loss (an import's: its task's usual loss).
        Eager PyTorch runs it when it has a checkpoint, else its fastest runtime.

        Raises:
            NotFound: the model, version, dataset, split or path does not exist.
            InvalidArgument: the data does not fit the model's input, task or classes.
        """
        has_checkpoint = bool(self.store.versions.get(name, version).checkpoint)
        served = self.served(name, version, EAGER if has_checkpoint else "")
        record, meta = served.record, served.record.metadata
        eval_transforms = meta.eval_transforms
        located = self.store.datasets.locate(dataset, split, source)
        if bool(located.image_mode) != bool(meta.image_mode):
            kinds = ("tensors", "images")
            raise InvalidArgument.field(
                "dataset",
                located.info.name,
                f"holds {kinds[bool(located.image_mode)]}, but model {name!r} "
                f"v{record.version} was trained on {kinds[bool(meta.image_mode)]}",
            )
        pipeline = prepare(located, eval_transforms, eval_transforms)
        info = pipeline.info
        if tuple(info.feature_shape) != meta.input_shape or info.task != meta.task:
            raise InvalidArgument.field(
                "dataset.source.path" if source is not None else "dataset.name",
                source.path if source is not None else dataset,
                f"holds {info.task} samples of shape {list(info.feature_shape)}, but model "
                f"{name!r} v{record.version} takes {meta.task} inputs of shape "
                f"{meta.input_shape}",
            )
        if info.task == CLASSIFICATION and tuple(info.classes) != meta.classes[: len(info.classes)]:
            raise InvalidArgument.field(
                "dataset",
                info.name,
                f"has the classes {list(info.classes)}, but model {name!r} "
                f"v{record.version} was trained on {meta.classes}",
            )
        loader = eval_loader(pipeline.eval_set(), batch_size, self.device)
        return record, evaluate(
            as_module(served.runtime),
            loader,
            meta.objective,
            meta.objective.make(meta.label_smoothing()),
            tuple(meta.classes),
            self.device,
        )

    # ----------------------------------------------------------------- models

    def export(
        self, name: str, version: int, fmt: str, opset: int, tolerance: float
    ) -> tuple[ModelVersionRecord, dict[str, Any]]:
        """Exports a version, checks parity, stores the artifact and serves it from now on.

        Exports run one at a time: the exporter is not built for concurrent use.
        """
        record = self.store.versions.get(name, version)
        with self._export_lock:
            module, config = load_model(
                self.store.versions.verified_checkpoint(record), torch.device("cpu")
            )
            path = self.store.versions.artifact_path(record, FILE_NAMES[fmt])
            result = export_model(module, config, fmt, path, opset, tolerance)
        meta = {k: v for k, v in asdict(result).items() if k not in ("path", "format")}
        meta["file_name"] = path.name
        self.store.registry.put_artifact(name, record.version, fmt, meta)
        self.forget(name, record.version)
        return record, self.store.versions.artifacts(record)[fmt]

    def batching(self, name: str) -> BatchingConfig:
        """The batching in force for a model, with its bucket sizes resolved to a tuple."""
        return self.batching_in_force(name).config

    def batching_in_force(self, name: str) -> BatchingInForce:
        """The batching in force for a model: its own setting, else the server's default;
        its bucket sizes are the model's own, else `bucket_sizes` resolved for this device."""
        own = self.store.registry.batching(name)
        config = BatchingConfig(**own) if own is not None else self.default_batching
        if config.bucket_sizes is not None:
            sizes = tuple(config.bucket_sizes)
        elif self.bucket_sizes != "auto":
            sizes = tuple(self.bucket_sizes)
        elif self.device.type == "cuda":
            sizes = powers_of_two(config.max_batch_size)[-MAX_BUCKETS:]  # 65536 would make 17
        else:
            sizes = ()
        return BatchingInForce(
            replace(config, bucket_sizes=sizes), own is None, config.bucket_sizes is not None
        )

    def loaded(self, name: str) -> dict[int, list[LoadedRuntime]]:
        """A model's loaded runtimes by version: where each runs, its load and its buckets."""
        held: dict[int, list[LoadedRuntime]] = {}
        for served in self.cache.values():
            if served.record.name == name:
                held.setdefault(served.record.version, []).append(served.loaded())
        return held

    def configure_batching(self, name: str, config: BatchingConfig | None) -> BatchingInForce:
        """Sets (or with None, clears) a model's batching; loaded runtimes pick it up."""
        self.store.versions.versions(name)
        self.store.registry.set_batching(name, None if config is None else asdict(config))
        self.forget(name)
        return self.batching_in_force(name)

    def delete(self, name: str, version: int) -> list[int]:
        """Deletes versions and drops their loaded runtimes."""
        deleted = self.store.versions.delete(name, version)
        for number in deleted:
            self.forget(name, number)
            self.statistics.forget(name, number)
        return deleted

    def queued(self) -> int:
        """Request pieces waiting in the batchers of the loaded runtimes."""
        return sum(s.batcher.queued() for s in self.cache.values() if s.batcher is not None)

    def close(self) -> None:
        """Releases every loaded runtime; nothing is loaded after (a frontend's piece that
        arrives while the server stops fails with UNAVAILABLE)."""
        self._closed = True
        self.cache.evict(lambda key: True)
