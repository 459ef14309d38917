import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_INTERRUPTED: _ClassVar[JobState]

class PredictOutput(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREDICT_OUTPUT_UNSPECIFIED: _ClassVar[PredictOutput]
    PREDICT_OUTPUT_RAW: _ClassVar[PredictOutput]
    PREDICT_OUTPUT_PROBABILITIES: _ClassVar[PredictOutput]
    PREDICT_OUTPUT_TOP_K: _ClassVar[PredictOutput]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_TORCHSCRIPT: _ClassVar[ExportFormat]
    EXPORT_FORMAT_ONNX: _ClassVar[ExportFormat]

class ImportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMPORT_FORMAT_UNSPECIFIED: _ClassVar[ImportFormat]
    IMPORT_FORMAT_ONNX: _ClassVar[ImportFormat]
    IMPORT_FORMAT_TORCHSCRIPT: _ClassVar[ImportFormat]
    IMPORT_FORMAT_STATE_DICT: _ClassVar[ImportFormat]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_INTERRUPTED: JobState
PREDICT_OUTPUT_UNSPECIFIED: PredictOutput
PREDICT_OUTPUT_RAW: PredictOutput
PREDICT_OUTPUT_PROBABILITIES: PredictOutput
PREDICT_OUTPUT_TOP_K: PredictOutput
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_FORMAT_TORCHSCRIPT: ExportFormat
EXPORT_FORMAT_ONNX: ExportFormat
IMPORT_FORMAT_UNSPECIFIED: ImportFormat
IMPORT_FORMAT_ONNX: ImportFormat
IMPORT_FORMAT_TORCHSCRIPT: ImportFormat
IMPORT_FORMAT_STATE_DICT: ImportFormat

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class DatasetRef(_message.Message):
    __slots__ = ("name", "split", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    split: str
    source: DataSource
    def __init__(self, name: _Optional[str] = ..., split: _Optional[str] = ..., source: _Optional[_Union[DataSource, _Mapping]] = ...) -> None: ...

class DataSource(_message.Message):
    __slots__ = ("format", "path", "label_pattern", "target_columns", "feature_columns", "task")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LABEL_PATTERN_FIELD_NUMBER: _ClassVar[int]
    TARGET_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    format: str
    path: str
    label_pattern: str
    target_columns: _containers.RepeatedScalarFieldContainer[str]
    feature_columns: _containers.RepeatedScalarFieldContainer[str]
    task: str
    def __init__(self, format: _Optional[str] = ..., path: _Optional[str] = ..., label_pattern: _Optional[str] = ..., target_columns: _Optional[_Iterable[str]] = ..., feature_columns: _Optional[_Iterable[str]] = ..., task: _Optional[str] = ...) -> None: ...

class Resize(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, size: _Optional[_Iterable[int]] = ...) -> None: ...

class CenterCrop(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, size: _Optional[_Iterable[int]] = ...) -> None: ...

class RandomCrop(_message.Message):
    __slots__ = ("size", "padding")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    size: _containers.RepeatedScalarFieldContainer[int]
    padding: int
    def __init__(self, size: _Optional[_Iterable[int]] = ..., padding: _Optional[int] = ...) -> None: ...

class RandomHorizontalFlip(_message.Message):
    __slots__ = ("p",)
    P_FIELD_NUMBER: _ClassVar[int]
    p: float
    def __init__(self, p: _Optional[float] = ...) -> None: ...

class Grayscale(_message.Message):
    __slots__ = ("num_output_channels",)
    NUM_OUTPUT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    num_output_channels: int
    def __init__(self, num_output_channels: _Optional[int] = ...) -> None: ...

class ToTensor(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Normalize(_message.Message):
    __slots__ = ("mean", "std")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ...) -> None: ...

class Transform(_message.Message):
    __slots__ = ("resize", "center_crop", "random_crop", "random_horizontal_flip", "grayscale", "to_tensor", "normalize")
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    CENTER_CROP_FIELD_NUMBER: _ClassVar[int]
    RANDOM_CROP_FIELD_NUMBER: _ClassVar[int]
    RANDOM_HORIZONTAL_FLIP_FIELD_NUMBER: _ClassVar[int]
    GRAYSCALE_FIELD_NUMBER: _ClassVar[int]
    TO_TENSOR_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    resize: Resize
    center_crop: CenterCrop
    random_crop: RandomCrop
    random_horizontal_flip: RandomHorizontalFlip
    grayscale: Grayscale
    to_tensor: ToTensor
    normalize: Normalize
    def __init__(self, resize: _Optional[_Union[Resize, _Mapping]] = ..., center_crop: _Optional[_Union[CenterCrop, _Mapping]] = ..., random_crop: _Optional[_Union[RandomCrop, _Mapping]] = ..., random_horizontal_flip: _Optional[_Union[RandomHorizontalFlip, _Mapping]] = ..., grayscale: _Optional[_Union[Grayscale, _Mapping]] = ..., to_tensor: _Optional[_Union[ToTensor, _Mapping]] = ..., normalize: _Optional[_Union[Normalize, _Mapping]] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("name", "split", "classes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    split: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., split: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("features", "targets")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    features: Tensor
    targets: Tensor
    def __init__(self, features: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class UploadDatasetRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: UploadChunk
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[UploadChunk, _Mapping]] = ...) -> None: ...

class DatasetSplit(_message.Message):
    __slots__ = ("split", "num_samples")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    split: str
    num_samples: int
    def __init__(self, split: _Optional[str] = ..., num_samples: _Optional[int] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "builtin", "splits", "feature_shape", "feature_dtype", "classes", "target_shape", "task")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TARGET_SHAPE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    name: str
    builtin: bool
    splits: _containers.RepeatedCompositeFieldContainer[DatasetSplit]
    feature_shape: _containers.RepeatedScalarFieldContainer[int]
    feature_dtype: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    target_shape: _containers.RepeatedScalarFieldContainer[int]
    task: str
    def __init__(self, name: _Optional[str] = ..., builtin: _Optional[bool] = ..., splits: _Optional[_Iterable[_Union[DatasetSplit, _Mapping]]] = ..., feature_shape: _Optional[_Iterable[int]] = ..., feature_dtype: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., target_shape: _Optional[_Iterable[int]] = ..., task: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class MLPSpec(_message.Message):
    __slots__ = ("hidden_sizes", "dropout", "activation")
    HIDDEN_SIZES_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    hidden_sizes: _containers.RepeatedScalarFieldContainer[int]
    dropout: float
    activation: str
    def __init__(self, hidden_sizes: _Optional[_Iterable[int]] = ..., dropout: _Optional[float] = ..., activation: _Optional[str] = ...) -> None: ...

class CNNSpec(_message.Message):
    __slots__ = ("channels", "dropout", "batch_norm")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    BATCH_NORM_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedScalarFieldContainer[int]
    dropout: float
    batch_norm: bool
    def __init__(self, channels: _Optional[_Iterable[int]] = ..., dropout: _Optional[float] = ..., batch_norm: _Optional[bool] = ...) -> None: ...

class TorchvisionSpec(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PluginModelSpec(_message.Message):
    __slots__ = ("name", "options")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    options: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("mlp", "cnn", "torchvision", "plugin")
    MLP_FIELD_NUMBER: _ClassVar[int]
    CNN_FIELD_NUMBER: _ClassVar[int]
    TORCHVISION_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    mlp: MLPSpec
    cnn: CNNSpec
    torchvision: TorchvisionSpec
    plugin: PluginModelSpec
    def __init__(self, mlp: _Optional[_Union[MLPSpec, _Mapping]] = ..., cnn: _Optional[_Union[CNNSpec, _Mapping]] = ..., torchvision: _Optional[_Union[TorchvisionSpec, _Mapping]] = ..., plugin: _Optional[_Union[PluginModelSpec, _Mapping]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("epochs", "batch_size", "learning_rate", "optimizer", "momentum", "weight_decay", "loss", "val_fraction", "patience", "min_delta", "seed", "shuffle", "drop_last", "num_workers", "device", "tensorboard", "label_smoothing", "nesterov", "scheduler", "step_size", "gamma", "grad_clip_norm", "monitor", "amp", "channels_last", "compile")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_DELTA_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    DROP_LAST_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TENSORBOARD_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    NESTEROV_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    GRAD_CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    AMP_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_LAST_FIELD_NUMBER: _ClassVar[int]
    COMPILE_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    momentum: float
    weight_decay: float
    loss: str
    val_fraction: float
    patience: int
    min_delta: float
    seed: int
    shuffle: bool
    drop_last: bool
    num_workers: int
    device: str
    tensorboard: bool
    label_smoothing: float
    nesterov: bool
    scheduler: str
    step_size: int
    gamma: float
    grad_clip_norm: float
    monitor: str
    amp: bool
    channels_last: bool
    compile: bool
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., optimizer: _Optional[str] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., loss: _Optional[str] = ..., val_fraction: _Optional[float] = ..., patience: _Optional[int] = ..., min_delta: _Optional[float] = ..., seed: _Optional[int] = ..., shuffle: _Optional[bool] = ..., drop_last: _Optional[bool] = ..., num_workers: _Optional[int] = ..., device: _Optional[str] = ..., tensorboard: _Optional[bool] = ..., label_smoothing: _Optional[float] = ..., nesterov: _Optional[bool] = ..., scheduler: _Optional[str] = ..., step_size: _Optional[int] = ..., gamma: _Optional[float] = ..., grad_clip_norm: _Optional[float] = ..., monitor: _Optional[str] = ..., amp: _Optional[bool] = ..., channels_last: _Optional[bool] = ..., compile: _Optional[bool] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("model_name", "dataset", "model", "config", "transforms", "eval_transforms", "init_from", "distributed")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    EVAL_TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    INIT_FROM_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    dataset: DatasetRef
    model: ModelSpec
    config: TrainingConfig
    transforms: _containers.RepeatedCompositeFieldContainer[Transform]
    eval_transforms: _containers.RepeatedCompositeFieldContainer[Transform]
    init_from: ModelRef
    distributed: DistributedConfig
    def __init__(self, model_name: _Optional[str] = ..., dataset: _Optional[_Union[DatasetRef, _Mapping]] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., config: _Optional[_Union[TrainingConfig, _Mapping]] = ..., transforms: _Optional[_Iterable[_Union[Transform, _Mapping]]] = ..., eval_transforms: _Optional[_Iterable[_Union[Transform, _Mapping]]] = ..., init_from: _Optional[_Union[ModelRef, _Mapping]] = ..., distributed: _Optional[_Union[DistributedConfig, _Mapping]] = ...) -> None: ...

class DistributedConfig(_message.Message):
    __slots__ = ("nproc_per_node", "nnodes", "backend", "rdzv_endpoint", "max_restarts")
    NPROC_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    NNODES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    RDZV_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    nproc_per_node: int
    nnodes: int
    backend: str
    rdzv_endpoint: str
    max_restarts: int
    def __init__(self, nproc_per_node: _Optional[int] = ..., nnodes: _Optional[int] = ..., backend: _Optional[str] = ..., rdzv_endpoint: _Optional[str] = ..., max_restarts: _Optional[int] = ...) -> None: ...

class EpochMetrics(_message.Message):
    __slots__ = ("epoch", "train_loss", "val_loss", "train_metrics", "val_metrics", "samples_per_second", "seconds", "learning_rate")
    class TrainMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ValMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_METRICS_FIELD_NUMBER: _ClassVar[int]
    VAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    train_loss: float
    val_loss: float
    train_metrics: _containers.ScalarMap[str, float]
    val_metrics: _containers.ScalarMap[str, float]
    samples_per_second: float
    seconds: float
    learning_rate: float
    def __init__(self, epoch: _Optional[int] = ..., train_loss: _Optional[float] = ..., val_loss: _Optional[float] = ..., train_metrics: _Optional[_Mapping[str, float]] = ..., val_metrics: _Optional[_Mapping[str, float]] = ..., samples_per_second: _Optional[float] = ..., seconds: _Optional[float] = ..., learning_rate: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "state", "request", "created_at", "started_at", "finished_at", "history", "model_version", "error", "device", "best_epoch")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: JobState
    request: TrainRequest
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    history: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    model_version: int
    error: str
    device: str
    best_epoch: int
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., request: _Optional[_Union[TrainRequest, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., history: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., model_version: _Optional[int] = ..., error: _Optional[str] = ..., device: _Optional[str] = ..., best_epoch: _Optional[int] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class JobQueued(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class JobStarted(_message.Message):
    __slots__ = ("device", "train_samples", "val_samples", "epochs", "steps_per_epoch", "start_epoch", "warm_started_tensors", "world_size")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    VAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    START_EPOCH_FIELD_NUMBER: _ClassVar[int]
    WARM_STARTED_TENSORS_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    device: str
    train_samples: int
    val_samples: int
    epochs: int
    steps_per_epoch: int
    start_epoch: int
    warm_started_tensors: int
    world_size: int
    def __init__(self, device: _Optional[str] = ..., train_samples: _Optional[int] = ..., val_samples: _Optional[int] = ..., epochs: _Optional[int] = ..., steps_per_epoch: _Optional[int] = ..., start_epoch: _Optional[int] = ..., warm_started_tensors: _Optional[int] = ..., world_size: _Optional[int] = ...) -> None: ...

class StepProgress(_message.Message):
    __slots__ = ("epoch", "step", "steps_per_epoch", "loss")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    step: int
    steps_per_epoch: int
    loss: float
    def __init__(self, epoch: _Optional[int] = ..., step: _Optional[int] = ..., steps_per_epoch: _Optional[int] = ..., loss: _Optional[float] = ...) -> None: ...

class EpochEnd(_message.Message):
    __slots__ = ("metrics", "eta_seconds", "epochs")
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    metrics: EpochMetrics
    eta_seconds: float
    epochs: int
    def __init__(self, metrics: _Optional[_Union[EpochMetrics, _Mapping]] = ..., eta_seconds: _Optional[float] = ..., epochs: _Optional[int] = ...) -> None: ...

class CheckpointSaved(_message.Message):
    __slots__ = ("epoch", "role")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    role: str
    def __init__(self, epoch: _Optional[int] = ..., role: _Optional[str] = ...) -> None: ...

class JobFinished(_message.Message):
    __slots__ = ("model_name", "model_version", "best_epoch", "epochs_run", "stopped_early", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_RUN_FIELD_NUMBER: _ClassVar[int]
    STOPPED_EARLY_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., best_epoch: _Optional[int] = ..., epochs_run: _Optional[int] = ..., stopped_early: _Optional[bool] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class JobFailed(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class JobCancelled(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class JobInterrupted(_message.Message):
    __slots__ = ("reason", "checkpoint_epoch")
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    reason: str
    checkpoint_epoch: int
    def __init__(self, reason: _Optional[str] = ..., checkpoint_epoch: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "seq", "time", "queued", "started", "progress", "epoch_end", "checkpoint_saved", "finished", "failed", "cancelled", "interrupted")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_END_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SAVED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seq: int
    time: _timestamp_pb2.Timestamp
    queued: JobQueued
    started: JobStarted
    progress: StepProgress
    epoch_end: EpochEnd
    checkpoint_saved: CheckpointSaved
    finished: JobFinished
    failed: JobFailed
    cancelled: JobCancelled
    interrupted: JobInterrupted
    def __init__(self, job_id: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., queued: _Optional[_Union[JobQueued, _Mapping]] = ..., started: _Optional[_Union[JobStarted, _Mapping]] = ..., progress: _Optional[_Union[StepProgress, _Mapping]] = ..., epoch_end: _Optional[_Union[EpochEnd, _Mapping]] = ..., checkpoint_saved: _Optional[_Union[CheckpointSaved, _Mapping]] = ..., finished: _Optional[_Union[JobFinished, _Mapping]] = ..., failed: _Optional[_Union[JobFailed, _Mapping]] = ..., cancelled: _Optional[_Union[JobCancelled, _Mapping]] = ..., interrupted: _Optional[_Union[JobInterrupted, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "model_name", "limit")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    model_name: str
    limit: int
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., model_name: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResumeJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model_name", "version", "dataset", "batch_size")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    dataset: DatasetRef
    batch_size: int
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., dataset: _Optional[_Union[DatasetRef, _Mapping]] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ClassMetrics(_message.Message):
    __slots__ = ("name", "precision", "recall", "support")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    precision: float
    recall: float
    support: int
    def __init__(self, name: _Optional[str] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., support: _Optional[int] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("model_name", "version", "num_samples", "loss", "metrics", "per_class", "confusion_matrix")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_MATRIX_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    num_samples: int
    loss: float
    metrics: _containers.ScalarMap[str, float]
    per_class: _containers.RepeatedCompositeFieldContainer[ClassMetrics]
    confusion_matrix: Tensor
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., num_samples: _Optional[int] = ..., loss: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., per_class: _Optional[_Iterable[_Union[ClassMetrics, _Mapping]]] = ..., confusion_matrix: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model_name", "version", "inputs", "outputs", "top_k", "runtime", "images")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    inputs: Tensor
    outputs: _containers.RepeatedScalarFieldContainer[PredictOutput]
    top_k: int
    runtime: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[PredictOutput, str]]] = ..., top_k: _Optional[int] = ..., runtime: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TopK(_message.Message):
    __slots__ = ("indices", "labels", "probabilities")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, indices: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[str]] = ..., probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model_name", "version", "runtime", "raw", "probabilities", "top_k", "batch_sizes", "device")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    runtime: str
    raw: Tensor
    probabilities: Tensor
    top_k: _containers.RepeatedCompositeFieldContainer[TopK]
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    device: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., runtime: _Optional[str] = ..., raw: _Optional[_Union[Tensor, _Mapping]] = ..., probabilities: _Optional[_Union[Tensor, _Mapping]] = ..., top_k: _Optional[_Iterable[_Union[TopK, _Mapping]]] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., device: _Optional[str] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("model_name", "version", "format", "opset", "tolerance")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    format: ExportFormat
    opset: int
    tolerance: float
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., format: _Optional[_Union[ExportFormat, str]] = ..., opset: _Optional[int] = ..., tolerance: _Optional[float] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("format", "file_name", "size_bytes", "sha256", "opset", "max_abs_diff", "parity_batch_sizes", "created_at", "imported")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    PARITY_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    format: ExportFormat
    file_name: str
    size_bytes: int
    sha256: str
    opset: int
    max_abs_diff: float
    parity_batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    created_at: _timestamp_pb2.Timestamp
    imported: bool
    def __init__(self, format: _Optional[_Union[ExportFormat, str]] = ..., file_name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., opset: _Optional[int] = ..., max_abs_diff: _Optional[float] = ..., parity_batch_sizes: _Optional[_Iterable[int]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., imported: _Optional[bool] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("model_name", "version", "format", "chunk_bytes")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    format: ExportFormat
    chunk_bytes: int
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., format: _Optional[_Union[ExportFormat, str]] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data", "artifact")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    artifact: Artifact
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., artifact: _Optional[_Union[Artifact, _Mapping]] = ...) -> None: ...

class BatchingConfig(_message.Message):
    __slots__ = ("enabled", "max_batch_size", "max_delay_ms", "server_default", "bucket_sizes", "own_bucket_sizes")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    SERVER_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    BUCKET_SIZES_FIELD_NUMBER: _ClassVar[int]
    OWN_BUCKET_SIZES_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    max_batch_size: int
    max_delay_ms: float
    server_default: bool
    bucket_sizes: _containers.RepeatedScalarFieldContainer[int]
    own_bucket_sizes: bool
    def __init__(self, enabled: _Optional[bool] = ..., max_batch_size: _Optional[int] = ..., max_delay_ms: _Optional[float] = ..., server_default: _Optional[bool] = ..., bucket_sizes: _Optional[_Iterable[int]] = ..., own_bucket_sizes: _Optional[bool] = ...) -> None: ...

class ConfigureBatchingRequest(_message.Message):
    __slots__ = ("model_name", "batching")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    batching: BatchingConfig
    def __init__(self, model_name: _Optional[str] = ..., batching: _Optional[_Union[BatchingConfig, _Mapping]] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "created_at", "job_id", "task", "input_shape", "input_dtype", "output_size", "classes", "metrics", "training", "best_epoch", "history", "artifacts", "eval_transforms", "image_mode", "imported", "runtimes", "loaded")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    EVAL_TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MODE_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    version: int
    created_at: _timestamp_pb2.Timestamp
    job_id: str
    task: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    input_dtype: str
    output_size: int
    classes: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.ScalarMap[str, float]
    training: TrainRequest
    best_epoch: int
    history: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    eval_transforms: _containers.RepeatedCompositeFieldContainer[Transform]
    image_mode: str
    imported: ImportedFile
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    loaded: _containers.RepeatedCompositeFieldContainer[LoadedRuntime]
    def __init__(self, version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job_id: _Optional[str] = ..., task: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., input_dtype: _Optional[str] = ..., output_size: _Optional[int] = ..., classes: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., training: _Optional[_Union[TrainRequest, _Mapping]] = ..., best_epoch: _Optional[int] = ..., history: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., eval_transforms: _Optional[_Iterable[_Union[Transform, _Mapping]]] = ..., image_mode: _Optional[str] = ..., imported: _Optional[_Union[ImportedFile, _Mapping]] = ..., runtimes: _Optional[_Iterable[str]] = ..., loaded: _Optional[_Iterable[_Union[LoadedRuntime, _Mapping]]] = ...) -> None: ...

class LoadedRuntime(_message.Message):
    __slots__ = ("runtime", "placement", "size_bytes", "load_seconds", "buckets", "bucket_device_bytes")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_DEVICE_BYTES_FIELD_NUMBER: _ClassVar[int]
    runtime: str
    placement: str
    size_bytes: int
    load_seconds: float
    buckets: _containers.RepeatedCompositeFieldContainer[Bucket]
    bucket_device_bytes: int
    def __init__(self, runtime: _Optional[str] = ..., placement: _Optional[str] = ..., size_bytes: _Optional[int] = ..., load_seconds: _Optional[float] = ..., buckets: _Optional[_Iterable[_Union[Bucket, _Mapping]]] = ..., bucket_device_bytes: _Optional[int] = ...) -> None: ...

class Bucket(_message.Message):
    __slots__ = ("batch_size", "warmup_seconds")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    warmup_seconds: float
    def __init__(self, batch_size: _Optional[int] = ..., warmup_seconds: _Optional[float] = ...) -> None: ...

class ImportHeader(_message.Message):
    __slots__ = ("model_name", "format", "file_name", "size_bytes", "input_shape", "input_dtype", "task", "classes", "eval_transforms", "image_mode", "architecture", "output_size")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    EVAL_TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MODE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    format: ImportFormat
    file_name: str
    size_bytes: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    input_dtype: str
    task: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    eval_transforms: _containers.RepeatedCompositeFieldContainer[Transform]
    image_mode: str
    architecture: ModelSpec
    output_size: int
    def __init__(self, model_name: _Optional[str] = ..., format: _Optional[_Union[ImportFormat, str]] = ..., file_name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., input_dtype: _Optional[str] = ..., task: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., eval_transforms: _Optional[_Iterable[_Union[Transform, _Mapping]]] = ..., image_mode: _Optional[str] = ..., architecture: _Optional[_Union[ModelSpec, _Mapping]] = ..., output_size: _Optional[int] = ...) -> None: ...

class ImportTrailer(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class ImportModelRequest(_message.Message):
    __slots__ = ("header", "chunk", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: ImportHeader
    chunk: bytes
    trailer: ImportTrailer
    def __init__(self, header: _Optional[_Union[ImportHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ..., trailer: _Optional[_Union[ImportTrailer, _Mapping]] = ...) -> None: ...

class ImportModelResponse(_message.Message):
    __slots__ = ("model_name", "version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: ModelVersion
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class ImportedFile(_message.Message):
    __slots__ = ("format", "file_name", "sha256", "size_bytes")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    format: ImportFormat
    file_name: str
    sha256: str
    size_bytes: int
    def __init__(self, format: _Optional[_Union[ImportFormat, str]] = ..., file_name: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "versions", "latest_version", "batching")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    latest_version: int
    batching: BatchingConfig
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., latest_version: _Optional[int] = ..., batching: _Optional[_Union[BatchingConfig, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("deleted_versions",)
    DELETED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    deleted_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, deleted_versions: _Optional[_Iterable[int]] = ...) -> None: ...
