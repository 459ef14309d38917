"""Whether a training spec fits its data: loss, monitored metric, batching and architecture,
checked before a job is queued and again when it starts."""

from torchwire.service.core.architectures import ModelConfig
from torchwire.service.core.datasets import DatasetInfo
from torchwire.service.core.loaders import split_sizes
from torchwire.service.core.spec import TrainSpec
from torchwire.service.errors import InvalidArgument


def check_compatible(spec: TrainSpec, info: DatasetInfo) -> ModelConfig:
    """Checks the loss, the monitored metric, the batching and the architecture against the
    data (after its transforms); returns the model config for it."""
    config = spec.config
    objective = config.objective
    if objective.task != info.task:
        raise InvalidArgument.field(
            "config.loss",
            config.loss,
            f"trains {objective.task}, but dataset {info.name!r} is {info.task}",
        )
    if objective.binary and len(info.classes) != 2:
        raise InvalidArgument.field(
            "config.loss",
            config.loss,
            f"needs exactly 2 classes, but dataset {info.name!r} has {len(info.classes)}",
        )
    metric = config.monitor.partition("_")[2]
    if metric not in ("loss", objective.metric):
        raise InvalidArgument.field(
            "config.monitor", config.monitor, f"is not reported for {objective.task}"
        )
    parallel = spec.distributed
    world_size = parallel.nproc_per_node * parallel.nnodes if parallel else 1
    split_sizes(
        info.splits[spec.split],
        config.val_fraction,
        config.batch_size,
        config.drop_last,
        world_size,
    )
    model_config = ModelConfig(
        spec.architecture, spec.params, info.feature_shape, objective.output_size(info)
    )
    model_config.check_forward()
    return model_config
