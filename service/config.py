"""Server configuration: a typed, frozen dataclass built from flags and environment."""

from dataclasses import dataclass
from pathlib import Path

from torchwire.defaults import DEFAULT_ADDRESS, DEFAULT_MAX_MESSAGE_BYTES
from torchwire.service.core.buckets import check_bucket_sizes
from torchwire.service.core.runtimes import CONV_ALGO_SEARCHES, PRECISIONS
from torchwire.service.errors import InvalidArgument


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs to start.

    Attributes:
        address: host:port to bind; port 0 picks a free one.
        store_dir: root of the local store (SQLite registry and files).
        max_message_bytes: largest gRPC message accepted or sent.
        max_concurrent_jobs: training jobs that run at once, each in its own process.
        max_queued_jobs: jobs waiting for a slot; beyond this Train is RESOURCE_EXHAUSTED.
        max_loaded_bytes: memory bound of the inference cache (LRU): weights of loaded runtimes.
        batching: dynamic batching for models without a setting of their own.
        max_batch_size: rows per merged run (server-wide default); larger requests are split.
        max_batch_delay_ms: how long a run waits for more requests (server-wide default).
        ort_intra_op_threads: ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose.
        bucket_sizes: fixed-shape execution: batch sizes every model run is padded up to,
            each on an executor of its own warmed up at load (an ONNX Runtime session per
            size, sharing the weights on CUDA). "auto": powers of two up to the model's
            max_batch_size on CUDA, where every change of input shape costs a re-plan, and
            none on the CPU; "off"; or sizes such as 1,8,64. A model's own batching setting
            (ConfigureBatching) wins.
        ort_cudnn_conv_algo_search: ONNX Runtime on CUDA: how cuDNN picks convolution
            algorithms, once per input shape: EXHAUSTIVE (measures them all; the fastest
            runs), HEURISTIC or DEFAULT.
        cuda_tf32: CUDA inference: let matmuls and convolutions use TF32 (faster on Ampere
            and newer, up to 2.7e-3 from float32 on an H100); off keeps float32 math.
        cuda_graphs: eager and TorchScript on CUDA: capture each bucket's forward pass as a
            CUDA graph, replayed with one launch (needs bucket sizes).
        inference_precision: eager and TorchScript: fp32, or fp16 / bf16 weights and math
            (outputs still float32); ONNX Runtime runs the file as exported.
        max_predict_rows: most samples one Predict request (or stream message) may carry.
        auth_tokens: bearer tokens that may call, comma-separated; with `auth_tokens_file`
            (one per line), none at all leaves the server open.
        auth_tokens_file: a file of bearer tokens, one per line (# starts a comment).
        tls_cert, tls_key: PEM files of the server's certificate chain and key: serve TLS.
        tls_client_ca: PEM file of the CA that signs client certificates: require mutual TLS.
        metrics_address: host:port for Prometheus' /metrics over HTTP; empty turns it off.
        http_address: host:port for the v2 protocol over HTTP/JSON (REST); empty turns it
            off. The same tokens and TLS apply as on the gRPC port.
        max_upload_bytes: largest dataset an upload may store.
        max_import_bytes: largest model file ImportModel accepts.
        data_roots: folders that file sources (image folders, CSV, torchvision datasets) may
            read, comma-separated; `<store_dir>/data` is always one.
        multi_node: accept distributed jobs that span machines (nnodes > 1). Their c10d
            rendezvous, like torchrun's, has no authentication: keep its port on a trusted
            network.
        allow_download: let torchvision datasets download into a data root when their files
            are missing (off: the server reads only what is there).
        rpc_threads: threads serving RPCs (in the server and in each frontend).
        frontends: extra processes that serve Predict on the same port (SO_REUSEPORT), each
            with its own interpreter, forwarding other methods to the server; 0 serves
            everything in one process.
        shared_run_ms: with frontends, a batched model whose one-row run takes at least this
            many milliseconds on the CPU runs only in the server, whose batcher merges the
            requests of every process; faster ones load and batch in each process (0: every
            batched model runs in the server; on a GPU every one always does).
        grace_seconds: how long in-flight RPCs may run on after shutdown begins.
    """

    address: str = DEFAULT_ADDRESS
    store_dir: Path = Path("store")
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_concurrent_jobs: int = 1
    max_queued_jobs: int = 16
    max_loaded_bytes: int = 2 * 1024 * 1024 * 1024
    batching: bool = True
    max_batch_size: int = 64
    max_batch_delay_ms: float = 0.0
    ort_intra_op_threads: int = 0
    bucket_sizes: str = "auto"
    ort_cudnn_conv_algo_search: str = "EXHAUSTIVE"
    cuda_tf32: bool = False
    cuda_graphs: bool = False
    inference_precision: str = "fp32"
    max_predict_rows: int = 65536
    auth_tokens: str = ""
    auth_tokens_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    metrics_address: str = ""
    http_address: str = ""
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    max_import_bytes: int = 4 * 1024 * 1024 * 1024
    data_roots: str = ""
    allow_download: bool = False
    multi_node: bool = False
    rpc_threads: int = 16
    frontends: int = 0
    shared_run_ms: float = 0.5
    grace_seconds: float = 10.0

    @property
    def buckets(self) -> tuple[int, ...] | str:
        """`bucket_sizes` parsed: "auto", or the sizes (empty for "off")."""
        if self.bucket_sizes in ("auto", "off"):
            return "auto" if self.bucket_sizes == "auto" else ()
        return check_bucket_sizes([int(s) for s in self.bucket_sizes.split(",")], "sizes")

    @property
    def data_root_paths(self) -> tuple[Path, ...]:
        """`data_roots` as paths."""
        return tuple(Path(p.strip()) for p in self.data_roots.split(",") if p.strip())

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        try:
            self.buckets  # noqa: B018 - parses and checks the setting
        except (ValueError, InvalidArgument) as err:
            raise ValueError(
                f"bucket_sizes={self.bucket_sizes!r}: auto, off, or ascending sizes "
                f"in [1, 65536] such as 1,8,64 ({err})"
            ) from err
        if self.cuda_graphs and self.buckets == ():
            raise ValueError("cuda_graphs captures one graph per bucket: it needs bucket_sizes")
        if self.ort_cudnn_conv_algo_search not in CONV_ALGO_SEARCHES:
            raise ValueError(
                f"ort_cudnn_conv_algo_search={self.ort_cudnn_conv_algo_search!r}: "
                f"must be one of {CONV_ALGO_SEARCHES}"
            )
        if self.inference_precision not in PRECISIONS:
            raise ValueError(
                f"inference_precision={self.inference_precision!r}: "
                f"must be one of {tuple(PRECISIONS)}"
            )
        if self.max_batch_size > 65536 or self.max_batch_delay_ms > 1000:
            raise ValueError("max_batch_size must be <= 65536 and max_batch_delay_ms <= 1000")
        for name in (
            "max_message_bytes",
            "max_concurrent_jobs",
            "max_loaded_bytes",
            "max_upload_bytes",
            "max_import_bytes",
            "rpc_threads",
            "max_batch_size",
            "max_predict_rows",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        for name in (
            "max_queued_jobs",
            "frontends",
            "shared_run_ms",
            "grace_seconds",
            "max_batch_delay_ms",
            "ort_intra_op_threads",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
