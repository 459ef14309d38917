"""Shared fixtures: a real server on port 0 with a temporary store, clients on real channels."""

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.imagedata import write_image_files
from torchwire.client import Client
from torchwire.service.config import ServerConfig
from torchwire.service.server import TorchwireServer, create_server


def start_server(store: Path, **overrides) -> TorchwireServer:
    """Builds and starts a server on a free port of 127.0.0.1."""
    config = ServerConfig(address="127.0.0.1:0", store_dir=store, grace_seconds=5, **overrides)
    server, _ = create_server(config)
    server.start()
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchwireServer]:
    """One server for the session; tests that need other limits start their own."""
    server = start_server(
        tmp_path_factory.mktemp("store"), max_concurrent_jobs=2, http_address="127.0.0.1:0"
    )
    yield server
    server.stop(grace=5)


@pytest.fixture(scope="session")
def client(server: TorchwireServer) -> Iterator[Client]:
    with Client(server.address, timeout=60) as client:
        client.wait_ready()
        yield client


@pytest.fixture(scope="session")
def digits_model(client: Client) -> str:
    """An MLP trained on the built-in digits: the model most tests query."""
    job = client.train("digits-mlp", "digits", epochs=12, seed=0)
    job.wait()
    return "digits-mlp"


@pytest.fixture(scope="session")
def cnn_model(client: Client) -> str:
    """A small CNN trained on the built-in digits."""
    client.train(
        "digits-small-cnn", "digits", architecture="cnn", channels=[8, 16], epochs=4, seed=0
    ).wait()
    return "digits-small-cnn"


@pytest.fixture(scope="session")
def regression_data(client: Client) -> str:
    """An uploaded regression dataset: y = 2 * sum(x) - 1 over 6 features."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 512), ("test", 128)):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        y = (2 * x.sum(axis=1) - 1).astype(np.float32)
        client.upload_dataset("linear", x, y, split=split)
    return "linear"


NORMALIZE = {"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}


@pytest.fixture(scope="session")
def data_root(server: TorchwireServer) -> Path:
    """The data root every server has: `<store>/data`."""
    return server.config.store_dir / "data"


@pytest.fixture(scope="session")
def colours(data_root: Path) -> dict[str, str]:
    """`image_files` folders of 12x12 PNGs labelled by file name, for training and testing."""
    write_image_files(data_root / "colours" / "train", per_class=30, seed=1)
    write_image_files(data_root / "colours" / "test", per_class=10, seed=2)
    return {"train": "colours/train", "test": "colours/test"}


@pytest.fixture(scope="session")
def colour_model(client: Client, colours: dict[str, str]) -> str:
    """A CNN trained on the colour PNGs, resized to 8x8 and normalised."""
    client.train(
        "colours-cnn",
        source={"format": "image_files", "path": colours["train"]},
        architecture="cnn",
        channels=[8],
        transforms=[{"resize": {"size": [8, 8]}}, NORMALIZE],
        epochs=6,
        learning_rate=0.01,
        seed=0,
    ).wait()
    return "colours-cnn"


def assert_rejected(call, code: grpc.StatusCode, *fragments: str) -> None:
    """`call()` fails with `code`, and its message names every fragment."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert_status(info.value, code, *fragments)


def assert_status(err: grpc.RpcError, code: grpc.StatusCode, *fragments: str) -> None:
    """The error has `code` and its message names every fragment (the field, the value)."""
    assert err.code() == code, f"{err.code()}: {err.details()}"
    for fragment in fragments:
        assert fragment in err.details(), f"{fragment!r} not in {err.details()!r}"
