"""The training core as a plain library: no gRPC, real tensors, real files."""

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_score, recall_score

from torchwire.service.core import events
from torchwire.service.core.architectures import CNNParams, MLPParams, ModelConfig
from torchwire.service.core.checkpoint import load_checkpoint, load_model, save_checkpoint, unwrap
from torchwire.service.core.datasets import BUILTIN_DATASETS, ArrayDataset, DatasetInfo
from torchwire.service.core.device import choose_device
from torchwire.service.core.evaluation import evaluate
from torchwire.service.core.loaders import Shard, TensorBatches, eval_loader
from torchwire.service.core.objectives import OBJECTIVES
from torchwire.service.core.pipeline import DataPipeline
from torchwire.service.core.spec import TrainConfig, TrainSpec
from torchwire.service.core.training import Trainer
from torchwire.service.errors import FailedPrecondition, InvalidArgument

DIGITS = BUILTIN_DATASETS["digits"]
CROSS_ENTROPY = OBJECTIVES["cross_entropy"]


@dataclass(frozen=True)
class Arrays:
    """A sample source over arrays, opened with a fixed transform unless given another."""

    info: DatasetInfo
    x: np.ndarray
    y: np.ndarray
    transform: Callable[[Any], Any] | None = None
    image_mode: str = ""

    def open(self, transform: Callable[[Any], Any] | None = None) -> ArrayDataset:
        return ArrayDataset(self.x, self.y, self.info.task, transform or self.transform)


def digits(transform: Callable[[Any], Any] | None = None) -> DataPipeline:
    """The digits' training split as a pipeline without preprocessing."""
    x, y = DIGITS.load("train")
    return DataPipeline(Arrays(DIGITS.info, x, y, transform), (), (), DIGITS.info)


def _train(tmp_path: Path, architecture: str = "mlp", params=None, **config) -> tuple:
    spec = TrainSpec(
        "m", "digits", "train", architecture, params or MLPParams(), TrainConfig(**config)
    )
    seen: list[events.Event] = []
    trainer = Trainer(spec, digits(), tmp_path, seen.append)
    return trainer.run(), seen, trainer


def test_model_config_rebuilds_the_same_architecture() -> None:
    for architecture, params in (("mlp", MLPParams((32,), 0.2)), ("cnn", CNNParams((8, 16)))):
        config = ModelConfig(architecture, params, (1, 8, 8), 10)
        again = ModelConfig.from_dict(config.to_dict())
        assert again == config
        model = again.build()
        assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_model_config_rejects_bad_params() -> None:
    with pytest.raises(InvalidArgument, match=r"model.mlp.hidden_sizes=\[0\]"):
        ModelConfig("mlp", MLPParams((0,)), (4,), 2)
    with pytest.raises(InvalidArgument, match=r"model.cnn=\[4\]"):
        ModelConfig("cnn", CNNParams(), (4,), 2)
    with pytest.raises(InvalidArgument, match="model='transformer'"):
        ModelConfig("transformer", MLPParams(), (4,), 2)


def test_training_is_reproducible_on_cpu(tmp_path: Path) -> None:
    first, _, _ = _train(tmp_path / "a", epochs=3, seed=7, device="cpu")
    second, _, _ = _train(tmp_path / "b", epochs=3, seed=7, device="cpu")
    third, _, _ = _train(tmp_path / "c", epochs=3, seed=8, device="cpu")
    assert [r.val_loss for r in first.history] == [r.val_loss for r in second.history]
    assert [r.train_loss for r in first.history] == [r.train_loss for r in second.history]
    assert [r.train_loss for r in first.history] != [r.train_loss for r in third.history]


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path) -> None:
    # A min_delta no epoch can beat: only epoch 1 "improves", then patience runs out.
    result, seen, _ = _train(tmp_path, epochs=50, patience=2, min_delta=100.0)
    assert result.stopped_early
    assert result.best_epoch == 1
    assert len(result.history) == 3
    saved = [(e.epoch, e.role) for e in seen if isinstance(e, events.CheckpointSaved)]
    assert saved == [(1, "best"), (1, "last"), (2, "last"), (3, "last")]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 1
    assert best["metrics"]["loss"] == result.history[0].val_loss
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3


def test_training_learns_digits_and_checkpoint_round_trips(tmp_path: Path) -> None:
    result, seen, trainer = _train(tmp_path, "cnn", CNNParams((16, 32)), epochs=10, patience=0)
    assert result.best_metrics["accuracy"] > 0.95
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "Started"
    assert kinds.count("EpochEnd") == 10
    state = load_checkpoint(tmp_path / "best.pt")
    assert set(state) == {
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "model_config",
        "metrics",
        "history",
    }
    assert state["optimizer"]["state"]  # Adam's moments are kept for resuming
    model, config = load_model(tmp_path / "best.pt", torch.device("cpu"))
    assert not model.training  # loaded for inference
    assert config.architecture == "cnn"
    x, y = DIGITS.load("test")
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert accuracy > 0.93


def test_evaluate_matches_sklearn_and_respects_eval_mode(tmp_path: Path) -> None:
    _, _, trainer = _train(
        tmp_path, params=MLPParams((64,), dropout=0.5), epochs=3, device="cpu"
    )  # the CPU's evaluate on CPU tensors
    model = trainer.model
    x, y = DIGITS.load("test")
    loader = eval_loader(ArrayDataset(x, y, "classification"), 50, torch.device("cpu"))
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    first = evaluate(
        model, loader, CROSS_ENTROPY, loss_fn, DIGITS.info.classes, torch.device("cpu")
    )
    second = evaluate(
        model, loader, CROSS_ENTROPY, loss_fn, DIGITS.info.classes, torch.device("cpu")
    )
    assert model.training  # evaluate restores the mode it found
    assert first.loss == second.loss  # dropout was off while evaluating
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(1).numpy()
    np.testing.assert_array_equal(first.confusion_matrix.numpy(), confusion_matrix(y, predicted))
    assert first.metrics["accuracy"] == pytest.approx((predicted == y).mean())
    precision = precision_score(y, predicted, average=None, zero_division=0)
    recall = recall_score(y, predicted, average=None, zero_division=0)
    np.testing.assert_allclose([c.precision for c in first.per_class], precision)
    np.testing.assert_allclose([c.recall for c in first.per_class], recall)


def test_regression_metrics(tmp_path: Path) -> None:
    x = np.linspace(-1, 1, 200, dtype=np.float32)[:, None]
    y = (3 * x[:, 0]).astype(np.float32)
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.bias.fill_(0.5)
    result = evaluate(
        model,
        eval_loader(ArrayDataset(x, y, "regression"), 64, torch.device("cpu")),
        OBJECTIVES["mse"],
        torch.nn.MSELoss(),
        (),
        torch.device("cpu"),
    )
    assert result.metrics["mae"] == pytest.approx(0.5, abs=1e-5)
    assert result.metrics["mse"] == pytest.approx(0.25, abs=1e-5)


def test_cancel_stops_within_a_batch(tmp_path: Path) -> None:
    spec = TrainSpec("m", "digits", "train", "mlp", MLPParams(), TrainConfig(epochs=5))
    batches = 0

    def should_stop() -> bool:
        nonlocal batches
        batches += 1
        return batches > 3

    result = Trainer(spec, digits(), tmp_path, lambda e: None, should_stop).run()
    assert result.cancelled
    assert batches == 4
    assert not result.history


def test_device_choice() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert choose_device("auto").type == expected
    assert choose_device("cpu").type == "cpu"
    with pytest.raises(InvalidArgument, match="config.device='tpu'"):
        choose_device("tpu")


def test_unwrap_compiled_and_ddp_style_wrappers() -> None:
    inner = torch.nn.Linear(2, 2)

    class Wrapper(torch.nn.Module):
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    assert unwrap(Wrapper(Wrapper(inner))) is inner
    assert unwrap(inner) is inner


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps({"model": _Payload(marker), "model_config": {}}, protocol=2))
    with pytest.raises(FailedPrecondition, match="cannot be loaded safely"):
        load_checkpoint(evil)
    assert not marker.exists()
    # The control: an unsafe load would have run the payload.
    pickle.loads(evil.read_bytes())
    assert marker.exists()


def test_checkpoint_write_is_atomic(tmp_path: Path) -> None:
    config = ModelConfig("mlp", MLPParams((4,)), (3,), 2)
    model = config.build()
    save_checkpoint(tmp_path / "best.pt", model, config, 1, {"loss": 1.0})
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary left behind
    with pytest.raises(FailedPrecondition, match="missing"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "torn.pt").write_bytes((tmp_path / "best.pt").read_bytes()[:100])
    with pytest.raises(FailedPrecondition):
        load_checkpoint(tmp_path / "torn.pt")


def test_fast_path_and_dataloader_path_train_alike(tmp_path: Path) -> None:
    spec = TrainSpec("m", "digits", "train", "mlp", MLPParams(), TrainConfig(epochs=5, seed=3))
    runs = {}
    for name, transform in (("fast", None), ("dataloader", torch.nn.Identity())):
        trainer = Trainer(spec, digits(transform), tmp_path / name, lambda e: None)
        runs[name] = (trainer, trainer.run())
    assert isinstance(runs["fast"][0].train_loader, TensorBatches)
    assert isinstance(runs["dataloader"][0].train_loader, torch.utils.data.DataLoader)
    for trainer, result in runs.values():
        assert len(trainer.train_loader) == 21  # ceil(1293 / 64)
        assert result.best_metrics["accuracy"] > 0.9
    # Both paths hold out the same validation samples for the same seed.
    fast_val = runs["fast"][0].val_loader.indices.tolist()
    assert fast_val == runs["dataloader"][0].val_loader.dataset.indices


def test_tensor_batches_cover_every_index_once() -> None:
    features = torch.arange(10.0).unsqueeze(1)
    targets = torch.arange(10)
    batches = TensorBatches(
        features,
        targets,
        torch.arange(10),
        4,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    seen = torch.cat([t for _, t in batches])
    assert sorted(seen.tolist()) == list(range(10))
    assert [len(t) for _, t in batches] == [4, 4, 2]
    dropped = TensorBatches(features, targets, torch.arange(10), 4, drop_last=True)
    assert [len(t) for _, t in dropped] == [4, 4]


def test_shards_cover_every_sample_with_equal_counts_even_with_more_ranks_than_samples() -> None:
    indices = torch.arange(10, 15)
    for world in (2, 3, 12):
        parts = [Shard(r, world, seed=1).order(indices, True, epoch=2) for r in range(world)]
        assert len({len(p) for p in parts}) == 1  # every rank runs as many batches
        assert set(torch.cat(parts).tolist()) == set(indices.tolist())
    first = Shard(0, 2, seed=1).order(indices, True, epoch=2)
    assert torch.equal(first, Shard(0, 2, seed=1).order(indices, True, epoch=2))
    epochs = {tuple(Shard(0, 2, seed=1).order(indices, True, epoch=e).tolist()) for e in range(6)}
    assert len(epochs) > 1  # set_epoch reshuffles
