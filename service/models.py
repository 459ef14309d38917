"""Model versions in use: loaded once through the cache, then evaluated, queried or deleted."""

from dataclasses import dataclass

import numpy as np

from torchwire.service.core.checkpoint import load_model
from torchwire.service.core.data import eval_loader
from torchwire.service.core.device import choose_device
from torchwire.service.core.evaluation import EvaluationResult, evaluate
from torchwire.service.core.inference import LoadedModel, ModelCache, Prediction
from torchwire.service.core.training import LOSSES
from torchwire.service.errors import InvalidArgument
from torchwire.service.store import Store
from torchwire.service.store.registry import ModelVersionRecord

PREDICT_OUTPUTS = ("raw", "probabilities", "top_k")


@dataclass(frozen=True)
class ServedVersion:
    """A registered version and its loaded model, cached together."""

    record: ModelVersionRecord
    model: LoadedModel


class ModelService:
    """Answers Predict and Evaluate for registered model versions.

    Args:
        store: where versions and datasets are registered.
        max_loaded_models: how many versions the LRU cache keeps loaded.
    """

    def __init__(self, store: Store, max_loaded_models: int) -> None:
        self.store = store
        self.device = choose_device("auto")
        self.cache: ModelCache[ServedVersion] = ModelCache(max_loaded_models, self._load)

    def _load(self, key: tuple[str, int]) -> ServedVersion:
        name, version = key
        record = self.store.models.get(name, version)
        module, _ = load_model(self.store.models.checkpoint(record), self.device)
        return ServedVersion(record, LoadedModel(module, self.device, record.metadata["task"]))

    def _served(self, name: str, version: int) -> ServedVersion:
        """The loaded version; after the first request, a cache hit without reading metadata."""
        return self.cache.get((name, self.store.models.resolve(name, version)))

    def predict(
        self, name: str, version: int, inputs: np.ndarray, outputs: set[str], top_k: int
    ) -> tuple[ModelVersionRecord, Prediction]:
        """Validates `inputs` against the version's recorded input, then runs it.

        Args:
            name: the model.
            version: its version; 0 for the latest.
            inputs: the batch.
            outputs: a subset of {"raw", "probabilities", "top_k"}; empty means "raw", plus
                "probabilities" and "top_k" for classifiers.
            top_k: classes per sample for "top_k"; 0 means 1.

        Raises:
            NotFound: the model or version does not exist.
            InvalidArgument: dtype or shape differ from the model's input, or an output
                that needs classes was asked of a regression model.
        """
        served = self._served(name, version)
        record, meta = served.record, served.record.metadata
        expected = tuple(meta["input_shape"])
        if inputs.dtype.name != meta["input_dtype"]:
            raise InvalidArgument.field(
                "inputs.dtype",
                inputs.dtype.name,
                f"model {name!r} v{record.version} takes {meta['input_dtype']}",
            )
        if inputs.ndim != len(expected) + 1 or inputs.shape[1:] != expected or not len(inputs):
            raise InvalidArgument.field(
                "inputs.shape",
                list(inputs.shape),
                f"model {name!r} v{record.version} takes "
                f"[n, {', '.join(map(str, expected))}] with n >= 1",
            )
        classifier = meta["task"] == "classification"
        if not outputs:
            outputs = set(PREDICT_OUTPUTS) if classifier else {"raw"}
        if not classifier and outputs != {"raw"}:
            raise InvalidArgument.field(
                "outputs", sorted(outputs), f"model {name!r} is a {meta['task']} model; ask for RAW"
            )
        return record, served.model.predict(
            inputs,
            "raw" in outputs,
            "probabilities" in outputs,
            (top_k or 1) if "top_k" in outputs else 0,
        )

    def evaluate(
        self, name: str, version: int, dataset: str, split: str, batch_size: int
    ) -> tuple[ModelVersionRecord, EvaluationResult]:
        """Evaluates a version on a dataset split with its training loss.

        Raises:
            NotFound: the model, version, dataset or split does not exist.
            InvalidArgument: the dataset does not fit the model's input or task.
        """
        served = self._served(name, version)
        record, meta = served.record, served.record.metadata
        location = self.store.datasets.locate(dataset, split)
        info = location.info
        if list(info.feature_shape) != meta["input_shape"] or info.task != meta["task"]:
            raise InvalidArgument.field(
                "dataset.name",
                dataset,
                f"holds {info.task} samples of shape {list(info.feature_shape)}, but model "
                f"{name!r} v{record.version} takes {meta['task']} inputs of shape "
                f"{meta['input_shape']}",
            )
        if info.task == "classification" and len(info.classes) > meta["output_size"]:
            raise InvalidArgument.field(
                "dataset.name",
                dataset,
                f"has {len(info.classes)} classes but the model predicts {meta['output_size']}",
            )
        loss_fn = LOSSES[meta["training"]["config"]["loss"]][0]()
        classes = tuple(meta["classes"])
        loader = eval_loader(location.open(), batch_size, self.device.type == "cuda")
        return record, evaluate(
            served.model.module, loader, loss_fn, meta["task"], classes, self.device
        )

    def delete(self, name: str, version: int) -> list[int]:
        """Deletes versions and drops their loaded copies."""
        deleted = self.store.models.delete(name, version)
        self.cache.evict(lambda key: key[0] == name and key[1] in deleted)
        return deleted
