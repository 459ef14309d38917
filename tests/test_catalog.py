"""The data and model catalog through the real server: file sources under the data roots,
transforms recorded with the model, Predict on encoded images, torchvision architectures,
losses, schedulers, early stopping, fine-tuning and learning curves."""

import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.conftest import NORMALIZE, assert_rejected
from tests.imagedata import (
    write_binary_csv,
    write_fashion_mnist,
    write_image_files,
    write_image_folder,
    write_regression_csv,
)
from torchwire.client import Client
from torchwire.client.cli import main as cli
from torchwire.service.server import TorchwireServer
from torchwire.v1 import torchwire_pb2 as pb

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_files_train_and_evaluate_with_labels_from_file_names(
    client: Client, colour_model: str, colours: dict[str, str]
) -> None:
    version = client.model(colour_model).versions[-1]
    assert list(version.classes) == ["blue", "green", "red"]
    assert list(version.input_shape) == [3, 8, 8]
    assert version.image_mode == "RGB"
    kinds = [t.WhichOneof("op") for t in version.eval_transforms]
    assert kinds == ["resize", "normalize"]
    assert version.training.dataset.source.format == "image_files"
    result = client.evaluate(
        colour_model, source={"format": "image_files", "path": colours["test"]}
    )
    assert result.num_samples == 30
    assert result.metrics["accuracy"] >= 0.9
    assert [c.name for c in result.per_class] == ["blue", "green", "red"]


def test_predict_on_png_matches_predict_on_the_tensor_preprocessed_by_hand(
    client: Client, colour_model: str, data_root: Path, colours: dict[str, str]
) -> None:
    paths = sorted((data_root / colours["test"]).glob("*.png"))[::7]
    images = [Image.open(p).convert("RGB") for p in paths]
    by_hand = np.stack(
        [
            (
                (np.asarray(i.resize((8, 8), Image.BILINEAR), np.float32) / 255 - 0.5) / 0.25
            ).transpose(2, 0, 1)
            for i in images
        ]
    )
    from_tensor = client.predict(colour_model, by_hand, runtime="eager")
    from_png = client.predict(colour_model, images=[_png(i) for i in images], runtime="eager")
    np.testing.assert_allclose(from_png.raw, from_tensor.raw, rtol=1e-4, atol=1e-4)
    assert from_png.top_labels == from_tensor.top_labels
    assert [labels[0] for labels in from_png.top_labels] == [p.name.split("_")[0] for p in paths]
    # JPEG is decoded the same way; the CLI takes image files too.
    jpeg = io.BytesIO()
    images[0].save(jpeg, format="JPEG", quality=95)
    assert (
        client.predict(colour_model, images=[jpeg.getvalue()]).top_labels[0][0]
        == (paths[0].name.split("_")[0])
    )


def test_image_folder_with_augmentation_records_a_deterministic_eval_transform(
    client: Client, data_root: Path
) -> None:
    write_image_folder(data_root / "folder" / "train", per_class=24, seed=3, size=14)
    write_image_folder(data_root / "folder" / "test", per_class=8, seed=4, size=14)
    client.train(
        "folder-cnn",
        source={"format": "image_folder", "path": "folder/train"},
        architecture="cnn",
        channels=[8],
        transforms=[
            {"random_crop": {"size": [12], "padding": 1}},
            {"random_horizontal_flip": {}},
            NORMALIZE,
        ],
        epochs=6,
        learning_rate=0.01,
        seed=0,
    ).wait()
    version = client.model("folder-cnn").versions[-1]
    assert [t.WhichOneof("op") for t in version.eval_transforms] == ["center_crop", "normalize"]
    assert list(version.eval_transforms[0].center_crop.size) == [12]
    assert list(version.input_shape) == [3, 12, 12]
    result = client.evaluate("folder-cnn", source={"format": "image_folder", "path": "folder/test"})
    assert result.num_samples == 24
    assert result.metrics["accuracy"] >= 0.9


def test_fashion_mnist_root_in_idx_format(client: Client, data_root: Path) -> None:
    write_fashion_mnist(data_root / "fmnist", train=300, test=100, seed=5)
    source = {"format": "fashion_mnist", "path": "fmnist"}
    client.train(
        "fmnist-mlp", source=source, hidden_sizes=[64], epochs=8, learning_rate=0.003, seed=0
    ).wait()
    version = client.model("fmnist-mlp").versions[-1]
    assert version.classes[0] == "T-shirt/top"
    assert len(version.classes) == 10
    assert list(version.input_shape) == [1, 28, 28]
    assert version.image_mode == "L"
    result = client.evaluate("fmnist-mlp", source=source, split="test")
    assert result.num_samples == 100
    assert result.metrics["accuracy"] >= 0.9


def test_torchvision_files_are_never_downloaded_by_default(client: Client, data_root: Path) -> None:
    (data_root / "empty").mkdir(exist_ok=True)
    assert_rejected(
        lambda: client.train("m", source={"format": "cifar10", "path": "empty"}),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CIFAR10",
        "--allow-download",
    )


def test_csv_regression_with_l1_loss_and_a_text_column_left_out(
    client: Client, data_root: Path
) -> None:
    write_regression_csv(data_root / "tables" / "train.csv", rows=400, seed=6)
    write_regression_csv(data_root / "tables" / "test.csv", rows=100, seed=7)
    source = {"format": "csv", "path": "tables/train.csv", "feature_columns": ["x1", "x2"]}
    client.train(
        "csv-regression",
        source=source,
        hidden_sizes=[32],
        loss="l1",
        epochs=40,
        learning_rate=0.01,
        monitor="val_mae",
        seed=0,
    ).wait()
    version = client.model("csv-regression").versions[-1]
    assert version.task == "regression"
    assert list(version.input_shape) == [2]
    result = client.evaluate("csv-regression", source={**source, "path": "tables/test.csv"})
    assert set(result.metrics) == {"mse", "mae"}
    assert result.metrics["mae"] < 0.25
    prediction = client.predict("csv-regression", np.array([[1.0, 0.0]], np.float32))
    assert prediction.raw[0, 0] == pytest.approx(2.5, abs=0.4)


def test_binary_csv_with_bce_with_logits(client: Client, data_root: Path) -> None:
    write_binary_csv(data_root / "tables" / "binary.csv", rows=400, seed=8)
    source = {"format": "csv", "path": "tables/binary.csv"}
    client.train(
        "csv-binary", source=source, loss="bce_with_logits", epochs=15, learning_rate=0.01, seed=0
    ).wait()
    version = client.model("csv-binary").versions[-1]
    assert list(version.classes) == ["no", "yes"]
    assert version.output_size == 1
    result = client.evaluate("csv-binary", source=source)
    assert result.metrics["accuracy"] >= 0.9
    assert len(result.per_class) == 2
    prediction = client.predict("csv-binary", np.array([[2.0, 1.0], [-2.0, -1.0]], np.float32))
    assert prediction.probabilities.shape == (2, 2)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert [labels[0] for labels in prediction.top_labels] == ["yes", "no"]


def test_resnet18_with_three_classes_on_small_images(
    client: Client, colours: dict[str, str]
) -> None:
    client.train(
        "colours-resnet",
        source={"format": "image_files", "path": colours["train"]},
        model={"torchvision": {"name": "resnet18"}},
        transforms=[{"resize": {"size": [16, 16]}}, NORMALIZE],
        epochs=2,
        batch_size=30,
        val_fraction=0.2,
        seed=0,
    ).wait()
    version = client.model("colours-resnet").versions[-1]
    assert version.output_size == 3
    assert list(version.input_shape) == [3, 16, 16]
    result = client.evaluate(
        "colours-resnet", source={"format": "image_files", "path": colours["test"]}
    )
    assert result.num_samples == 30
    assert result.confusion_matrix.shape == [3, 3]
    assert client.predict("colours-resnet", np.zeros((2, 3, 16, 16), np.float32)).raw.shape == (
        2,
        3,
    )


def test_grayscale_torchvision_model_rebuilds_its_first_convolution(
    client: Client, data_root: Path
) -> None:
    write_fashion_mnist(data_root / "fmnist-small", train=60, test=10, seed=9)
    job = client.train(
        "fmnist-mobilenet",
        source={"format": "fashion_mnist", "path": "fmnist-small"},
        model={"torchvision": {"name": "mobilenet_v3_small"}},
        transforms=[{"resize": {"size": [32, 32]}}],
        epochs=1,
        batch_size=20,
    )
    assert job.wait().state == pb.JOB_STATE_SUCCEEDED
    assert list(client.model("fmnist-mobilenet").versions[-1].input_shape) == [1, 32, 32]


def test_early_stopping_on_a_plateau_keeps_the_best_epoch(client: Client) -> None:
    job = client.train(
        "plateau",
        "digits",
        epochs=30,
        learning_rate=1e-7,
        patience=2,
        min_delta=0.05,
        seed=0,
    )
    final = job.wait()
    finished = [e.finished for e in job.events() if e.WhichOneof("kind") == "finished"][0]
    assert finished.stopped_early
    assert finished.epochs_run == 3
    assert final.best_epoch == 1 == finished.best_epoch
    version = client.model("plateau").versions[-1]
    assert version.metrics["loss"] == pytest.approx(final.history[0].val_loss)
    assert version.metrics["loss"] != final.history[-1].val_loss


def test_monitoring_accuracy_and_a_step_schedule(client: Client) -> None:
    final = client.train(
        "scheduled",
        "digits",
        epochs=4,
        learning_rate=0.004,
        scheduler="step",
        step_size=1,
        gamma=0.5,
        monitor="val_accuracy",
        optimizer="adamw",
        seed=0,
    ).wait()
    assert [round(m.learning_rate, 6) for m in final.history] == [0.004, 0.002, 0.001, 0.0005]
    accuracies = [m.val_metrics["accuracy"] for m in final.history]
    assert final.best_epoch == 1 + int(np.argmax(accuracies))
    recorded = client.model("scheduled").versions[-1].training.config
    assert recorded.weight_decay == pytest.approx(0.01)  # AdamW's default, filled in


def test_fine_tuning_starts_from_a_registered_version(client: Client, digits_model: str) -> None:
    job = client.train(
        "digits-finetuned", "digits", init_from=digits_model, epochs=1, learning_rate=1e-4
    )
    final = job.wait()
    started = next(e.started for e in job.events() if e.WhichOneof("kind") == "started")
    assert started.warm_started_tensors == 6  # three Linear layers: weights and biases
    assert final.history[0].train_metrics["accuracy"] > 0.95
    recorded = client.model("digits-finetuned").versions[-1].training.init_from
    assert recorded.name == digits_model
    assert recorded.version >= 1


def test_same_seed_gives_identical_curves_with_random_augmentation(
    client: Client, colours: dict[str, str]
) -> None:
    def run(seed: int) -> list[tuple[float, float]]:
        final = client.train(
            f"repro-{seed}-{len(client.jobs())}",
            source={"format": "image_files", "path": colours["train"]},
            transforms=[{"random_crop": {"size": [10]}}, {"random_horizontal_flip": {}}],
            hidden_sizes=[16],
            epochs=2,
            seed=seed,
            device="cpu",
        ).wait()
        return [(m.train_loss, m.val_loss) for m in final.history]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_plot_draws_a_valid_png(client: Client, server: TorchwireServer, tmp_path: Path) -> None:
    job = client.train("plotted", "digits", epochs=3, seed=0).wait()
    out = tmp_path / "curve.png"
    assert cli(["plot", job.id, "--out", str(out), "--server", server.address]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        image.verify()
        assert image.width > 400
        assert image.height > 200


def test_bad_catalog_requests_get_clear_statuses(
    client: Client, digits_model: str, colour_model: str, data_root: Path, tmp_path: Path
) -> None:
    write_regression_csv(data_root / "tables" / "train.csv", rows=400, seed=6)
    write_binary_csv(data_root / "tables" / "binary.csv", rows=400, seed=8)
    (data_root / "tables" / "latin1.csv").write_bytes(b"a,b\n1,\xff\n")
    (data_root / "tables" / "nan.csv").write_text("a,y\n1,2\n2,nan\n")
    outside = tmp_path / "outside"
    write_image_files(outside, per_class=1, seed=0)
    (data_root / "escape").symlink_to(outside)
    image_files = {"format": "image_files", "path": "colours/train"}

    def train(**kwargs):
        return lambda: client.train("bad", **kwargs)

    cases = [
        (train(source={"format": "image_folder", "path": "../../"}), INVALID, "outside"),
        (train(source={"format": "image_files", "path": str(outside)}), INVALID, "outside"),
        (train(source={"format": "image_files", "path": "escape"}), INVALID, "escape"),
        (train(source={"format": "parquet", "path": "x"}), INVALID, "dataset.source.format"),
        (train(source={"format": "csv", "path": "a\x00b.csv"}), INVALID, "not a usable path"),
        (train(source={"format": "csv", "path": "tables/latin1.csv"}), INVALID, "cannot be read"),
        (train(source={"format": "csv", "path": "tables/nan.csv"}), INVALID, "must be finite"),
        (train(source={**image_files, "label_pattern": "(x)" * 100}), INVALID, "longer than"),
        (train(source={"format": "csv", "path": "x" * 300}), INVALID, "not a usable path"),
        (
            # The pattern sees the name without its extension, and the message says so.
            train(source={**image_files, "label_pattern": r"\.(png)$"}),
            INVALID,
            "_000', the name of",
            "without its extension",
        ),
        (train(source={"format": "image_folder", "path": "nowhere"}), NOT_FOUND, "nowhere"),
        (train(dataset="no-such-data"), NOT_FOUND, "no-such-data"),
        (
            train(source={**image_files, "label_pattern": "[a-z]+"}),
            INVALID,
            "label_pattern",
        ),
        (
            train(source={"format": "csv", "path": "tables/train.csv", "target_columns": ["z"]}),
            INVALID,
            "'z'",
        ),
        (train(model={"torchvision": {"name": "resnet999"}}), INVALID, "resnet999"),
        (train(model={"plugin": {"name": "nope"}}), INVALID, "model.plugin.name"),
        (train(model={"mlp": {"activation": "swish"}}), INVALID, "model.mlp.activation"),
        (train(loss="hinge"), INVALID, "config.loss='hinge'"),
        (train(optimizer="lbfgs"), INVALID, "config.optimizer='lbfgs'"),
        (train(scheduler="plateau"), INVALID, "config.scheduler='plateau'"),
        (train(loss="bce_with_logits"), INVALID, "2 classes"),
        (train(monitor="val_mae"), INVALID, "config.monitor='val_mae'"),
        (train(monitor="val_accuracy", val_fraction=0.0), INVALID, "config.monitor"),
        (train(loss="mse", label_smoothing=0.1), INVALID, "config.label_smoothing"),
        (train(optimizer="adam", nesterov=True), INVALID, "config.nesterov"),
        (
            train(source={"format": "csv", "path": "tables/binary.csv"}, architecture="cnn"),
            INVALID,
            "model.cnn",
        ),
        (
            train(
                source=image_files,
                model={"torchvision": {"name": "vit_b_16"}},
                transforms=[{"resize": {"size": [16, 16]}}],
            ),
            INVALID,
            "does not accept",
        ),
        (train(source=image_files, transforms=[{"grayscale": {}}, NORMALIZE]), INVALID, "first"),
        (
            train(source=image_files, transforms=[{"normalize": {"mean": [0.5], "std": [0.5, 1]}}]),
            INVALID,
            "transforms[0].normalize.mean",
        ),
        (
            train(
                source=image_files, transforms=[{"normalize": {"mean": [0.5] * 2, "std": [1] * 2}}]
            ),
            INVALID,
            "transforms",
        ),
        (
            train(source=image_files, eval_transforms=[{"resize": {"size": [5, 5]}}]),
            INVALID,
            "eval_transforms",
        ),
        (train(init_from="no-such-model"), NOT_FOUND, "no-such-model"),
        (train(init_from=digits_model, hidden_sizes=[7]), INVALID, "init_from"),
        (
            lambda: client.predict(digits_model, images=[b"\x89PNG"]),
            INVALID,
            "images=<1 image>: model 'digits-mlp' v",
        ),
        (
            lambda: client.predict(colour_model, images=[b"not an image"]),
            INVALID,
            "images[0]=<12 bytes>: is not a PNG or JPEG image",  # not PIL's BytesIO repr
        ),
        (
            lambda: client.predict(colour_model, images=[_gif()]),
            INVALID,
            "bytes of GIF>: must be a PNG or JPEG image",
        ),
        (
            lambda: client.predict(
                colour_model, np.zeros((1, 3, 8, 8), np.float32), images=[_gif()]
            ),
            INVALID,
            "not both",
        ),
        (
            lambda: client.evaluate(
                colour_model, source={"format": "csv", "path": "tables/binary.csv"}
            ),
            INVALID,
            "dataset",
        ),
        (
            lambda: client.stub.Train(
                pb.TrainRequest(
                    model_name="bad",
                    dataset=pb.DatasetRef(
                        name="digits", source=pb.DataSource(format="csv", path="x.csv")
                    ),
                )
            ),
            INVALID,
            "not both",
        ),
    ]
    for call, code, *fragments in cases:
        assert_rejected(call, code, *fragments)


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


def test_cli_trains_from_a_spec_file_and_predicts_image_files(
    client: Client,
    server: TorchwireServer,
    colour_model: str,
    data_root: Path,
    colours: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        '{"model": {"cnn": {"channels": [4]}}, "transforms": [{"resize": {"size": [6, 6]}}],'
        ' "config": {"epochs": 3, "learning_rate": 0.01}}'
    )
    source = f"image_files:{colours['train']}"
    address = ["--server", server.address]
    assert cli(["train", "cli-spec", "--spec", str(spec), "--source", source, "--epochs", "1",
                "--wait", *address]) == 0  # fmt: skip
    request = client.model("cli-spec").versions[-1].training
    assert request.model.cnn.channels == [4]
    assert request.config.epochs == 1  # the flag overrides the file
    assert list(client.model("cli-spec").versions[-1].input_shape) == [3, 6, 6]
    paths = sorted((data_root / colours["test"]).glob("red_*.png"))[:2]
    capsys.readouterr()
    assert cli(["predict", colour_model, *map(str, paths), *address]) == 0
    assert capsys.readouterr().out.count("red (") == 2
