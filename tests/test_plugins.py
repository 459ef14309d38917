"""Dataset and model plugins, installed the way a package installs them (a dist-info with
entry points on the server's path), used by name through a real server process."""

import textwrap
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from tests.conftest import assert_rejected
from torchwire.client import Client
from torchwire.client.demo import start_server

PLUGIN = '''
"""A test plugin: striped 6x6 tensors, and a tiny network."""
import torch
from torch import nn
from torch.utils.data import Dataset


class Stripes(Dataset):
    classes = ["horizontal", "vertical"]

    def __init__(self, count, seed):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (count,), generator=generator)
        self.noise = torch.rand(count, 1, 6, 6, generator=generator) * 0.3

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.noise[index].clone()
        label = int(self.labels[index])
        if label:
            image[0, :, ::2] += 1.0
        else:
            image[0, ::2, :] += 1.0
        return image, torch.tensor(label)  # a 0-d tensor is a class id too


def load(split):
    return {"train": lambda: Stripes(200, 0), "test": lambda: Stripes(60, 1)}[split]()


def tiny(input_shape, output_size, width=4):
    assert isinstance(width, int), "whole numbers arrive as ints"
    return nn.Sequential(
        nn.Flatten(), nn.Linear(36, width), nn.ReLU(), nn.Linear(width, output_size)
    )
'''


@pytest.fixture(scope="module")
def plugin_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    site = tmp_path_factory.mktemp("site")
    (site / "stripes_plugin.py").write_text(PLUGIN)
    info = site / "stripes_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stripes-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [torchwire.datasets]
            stripes = stripes_plugin:load
            [torchwire.models]
            tiny = stripes_plugin:tiny
            """
        )
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(site))
        process, address = start_server(str(tmp_path_factory.mktemp("store")))
    try:
        with Client(address, timeout=60) as client:
            client.wait_ready()
            yield client
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_plugin_dataset_and_model_train_evaluate_and_predict(plugin_client: Client) -> None:
    listed = {d.name: d for d in plugin_client.datasets()}
    assert list(listed["stripes"].classes) == ["horizontal", "vertical"]
    assert {s.split: s.num_samples for s in listed["stripes"].splits} == {"train": 200, "test": 60}
    plugin_client.train(
        "stripes-tiny",
        "stripes",
        model={"plugin": {"name": "tiny", "options": {"width": 16}}},
        epochs=15,
        learning_rate=0.01,
        seed=0,
    ).wait()
    version = plugin_client.model("stripes-tiny").versions[-1]
    assert version.training.model.plugin.options["width"] == 16
    assert plugin_client.evaluate("stripes-tiny", "stripes").metrics["accuracy"] >= 0.9
    vertical = np.zeros((1, 1, 6, 6), np.float32)
    vertical[0, 0, :, ::2] = 1.0
    assert plugin_client.predict("stripes-tiny", vertical).top_labels == [["vertical"]]


def test_plugin_names_are_reserved_and_unknown_plugins_are_refused(plugin_client: Client) -> None:
    x, y = np.zeros((2, 3), np.float32), np.zeros(2, np.int64)
    assert_rejected(
        lambda: plugin_client.upload_dataset("stripes", x, y),
        grpc.StatusCode.INVALID_ARGUMENT,
        "plugin",
    )
    assert_rejected(
        lambda: plugin_client.train("m", "stripes", model={"plugin": {"name": "huge"}}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model.plugin.name='huge'",
        "tiny",
    )
