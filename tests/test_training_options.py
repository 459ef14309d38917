"""Training options in the core, without gRPC: optimizers, losses, schedules with resume,
gradient clipping, best-weight restoring, memory format, torch.compile and layer modes."""

import time
from pathlib import Path

import pytest
import torch

from tests.test_core import digits
from torchwire.service.core.architectures import CNNParams, MLPParams, ModelConfig
from torchwire.service.core.checkpoint import load_checkpoint, load_model
from torchwire.service.core.evaluation import evaluate
from torchwire.service.core.objectives import OBJECTIVES
from torchwire.service.core.spec import TrainConfig, TrainSpec
from torchwire.service.core.training import Trainer


def _trainer(
    tmp_path: Path, params=None, architecture: str = "mlp", resume_from=None, **config
) -> Trainer:
    spec = TrainSpec(
        "m", "digits", "train", architecture, params or MLPParams((64,)), TrainConfig(**config)
    )
    return Trainer(spec, digits(), tmp_path, lambda event: None, resume_from=resume_from)


@pytest.mark.parametrize(
    "config",
    [
        {"optimizer": "adamw"},
        {"optimizer": "rmsprop", "learning_rate": 1e-3, "momentum": 0.0},
        {"optimizer": "sgd", "learning_rate": 0.05, "nesterov": True},
        {"loss": "nll"},
        {"loss": "cross_entropy", "label_smoothing": 0.1},
        {"scheduler": "one_cycle", "learning_rate": 0.01},
    ],
)
def test_optimizers_and_losses_learn_the_digits(tmp_path: Path, config: dict) -> None:
    trainer = _trainer(tmp_path, **{"epochs": 5, "patience": 0, "learning_rate": 3e-3, **config})
    result = trainer.run()
    assert result.best_metrics["accuracy"] > 0.85
    kind = {"adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}
    assert isinstance(trainer.optimizer, kind.get(config.get("optimizer", ""), torch.optim.Adam))
    if config.get("nesterov"):
        assert trainer.optimizer.param_groups[0]["nesterov"]


def test_nll_is_cross_entropy_over_log_softmax() -> None:
    logits, targets = torch.randn(16, 5), torch.randint(0, 5, (16,))
    nll = OBJECTIVES["nll"].make(0.0)(logits, targets)
    assert torch.allclose(nll, torch.nn.functional.cross_entropy(logits, targets))


def test_schedules_step_per_epoch_or_batch_and_resume_with_their_state(tmp_path: Path) -> None:
    def rates(trainer: Trainer) -> list[float]:
        return [round(r.learning_rate, 8) for r in trainer.run().history]

    config = {"scheduler": "step", "step_size": 1, "gamma": 0.5, "patience": 0, "seed": 0}
    assert rates(_trainer(tmp_path / "a", epochs=2, **config)) == [0.001, 0.0005]
    resumed = _trainer(tmp_path / "b", epochs=4, resume_from=tmp_path / "a" / "last.pt", **config)
    assert rates(resumed) == [0.001, 0.0005, 0.00025, 0.000125]
    cosine = rates(_trainer(tmp_path / "c", epochs=4, scheduler="cosine", patience=0))
    assert cosine[0] == 0.001
    assert cosine == sorted(cosine, reverse=True)
    one_cycle = _trainer(tmp_path / "d", epochs=2, scheduler="one_cycle", learning_rate=0.01)
    one_cycle.run()
    steps = load_checkpoint(tmp_path / "d" / "last.pt")["scheduler"]["last_epoch"]
    assert steps == 2 * len(one_cycle.train_loader)  # stepped once per batch


def test_gradient_clipping_bounds_every_update(tmp_path: Path) -> None:
    clip, lr = 1e-4, 1.0
    trainer = _trainer(
        tmp_path, epochs=1, optimizer="sgd", momentum=0.0, learning_rate=lr, grad_clip_norm=clip
    )
    before = torch.cat([p.detach().clone().flatten() for p in trainer.module.parameters()])
    trainer.run()
    after = torch.cat([p.detach().flatten() for p in trainer.module.parameters()])
    steps = len(trainer.train_loader)
    assert 0 < (after - before).norm() <= steps * lr * clip * 1.001


def test_best_weights_are_kept_when_early_stopping_on_accuracy(tmp_path: Path) -> None:
    trainer = _trainer(
        tmp_path,
        epochs=12,
        learning_rate=0.05,
        optimizer="sgd",
        monitor="val_accuracy",
        patience=2,
        seed=0,
    )
    result = trainer.run()
    best = result.history[result.best_epoch - 1]
    assert best.val_metrics["accuracy"] == max(r.val_metrics["accuracy"] for r in result.history)
    model, _ = load_model(tmp_path / "best.pt", torch.device("cpu"))
    again = evaluate(
        model,
        trainer.val_loader,
        OBJECTIVES["cross_entropy"],
        torch.nn.CrossEntropyLoss(),
        trainer.info.classes,
        torch.device("cpu"),
    )
    assert again.metrics["accuracy"] == best.val_metrics["accuracy"]
    assert again.loss == pytest.approx(best.val_loss, rel=1e-6)


def test_channels_last_and_layer_options(tmp_path: Path) -> None:
    trainer = _trainer(
        tmp_path,
        CNNParams((8,), dropout=0.3, batch_norm=False),
        "cnn",
        epochs=1,
        channels_last=True,
    )
    trainer.run()
    conv = trainer.module.features[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trainer.module.modules())
    model = ModelConfig("mlp", MLPParams((8,), 0.5, "gelu"), (4,), 2).build()
    assert isinstance(model.body[2], torch.nn.GELU)
    batch = torch.randn(32, 4)
    model.eval()
    assert torch.equal(model(batch), model(batch))  # dropout is off in eval mode
    model.train()
    assert not torch.equal(model(batch), model(batch))


def test_torch_compile_trains_and_checkpoints_the_plain_module(tmp_path: Path) -> None:
    started = time.monotonic()
    trainer = _trainer(
        tmp_path, epochs=3, learning_rate=3e-3, compile=True, val_fraction=0.0, device="cpu"
    )
    result = trainer.run()
    assert trainer.model is not trainer.module
    assert result.best_metrics["accuracy"] > 0.85
    state = load_checkpoint(tmp_path / "best.pt")
    assert not any(key.startswith("_orig_mod") for key in state["model"])
    print(f"compile run: {time.monotonic() - started:.1f} s")
