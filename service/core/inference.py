"""Eager inference: loaded models in eval mode, and an LRU cache that loads each one once."""

import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import nn

from torchwire.service.core.data import CLASSIFICATION

# Request tensors are zero-copy views of the received bytes, hence read-only; the
# model only reads its inputs, so torch's warning about that is noise here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass(frozen=True)
class Prediction:
    """Outputs for a batch, in input order; fields are None when not asked for."""

    runtime: str
    raw: np.ndarray | None
    probabilities: np.ndarray | None
    top_indices: np.ndarray | None
    top_probabilities: np.ndarray | None


class LoadedModel:
    """A module in eval mode on its device, ready to answer batches.

    Args:
        module: the network, already in eval mode on `device`.
        device: where it runs.
        task: "classification" or "regression".
    """

    runtime = "eager"

    def __init__(self, module: nn.Module, device: torch.device, task: str) -> None:
        self.module = module.eval()
        self.device = device
        self.task = task

    def predict(self, batch: np.ndarray, raw: bool, probabilities: bool, top_k: int) -> Prediction:
        """Runs `batch` ([n, *input_shape]) under `inference_mode`.

        Args:
            batch: the inputs, already validated against the model's input.
            raw: return the raw outputs.
            probabilities: return softmax probabilities (classification only).
            top_k: return the k best classes per sample when > 0 (classification only).
        """
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
            output = self.module(inputs).float()
            probs = top_values = top_indices = None
            if self.task == CLASSIFICATION and (probabilities or top_k):
                probs = torch.softmax(output, dim=1)
                if top_k:
                    k = min(top_k, probs.shape[1])
                    values, indices = torch.topk(probs, k, dim=1)
                    top_values, top_indices = values.cpu().numpy(), indices.cpu().numpy()
            return Prediction(
                runtime=self.runtime,
                raw=output.cpu().numpy() if raw else None,
                probabilities=probs.cpu().numpy() if probs is not None and probabilities else None,
                top_indices=top_indices,
                top_probabilities=top_values,
            )


Loaded = TypeVar("Loaded")


class ModelCache(Generic[Loaded]):
    """Keeps up to `capacity` loaded models, evicting the least recently used.

    A model is loaded once even when many requests ask for it at the same time.

    Args:
        capacity: how many models stay loaded.
        load: builds the loaded model for a key.
    """

    def __init__(self, capacity: int, load: Callable[[Hashable], Loaded]) -> None:
        self.capacity = capacity
        self._load = load
        self._models: OrderedDict[Hashable, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable) -> Loaded:
        """The loaded model for `key`, loading it on first use."""
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                model = self._models.get(key)
            if model is None:
                model = self._load(key)
            with self._lock:
                self._models[key] = model
                self._models.move_to_end(key)
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
                self._loading.pop(key, None)
        return model

    def evict(self, predicate: Callable[[Hashable], bool]) -> None:
        """Drops every loaded model whose key matches."""
        with self._lock:
            for key in [k for k in self._models if predicate(k)]:
                del self._models[key]

    def loaded(self) -> list[Hashable]:
        """Keys of the loaded models, least recently used first."""
        with self._lock:
            return list(self._models)
