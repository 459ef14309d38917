"""The store on real SQLite and real files: registry, model versions, dataset uploads."""

from pathlib import Path

import numpy as np
import pytest

from torchwire.service.core.architectures import MLPParams, ModelConfig
from torchwire.service.core.checkpoint import save_checkpoint
from torchwire.service.core.records import VersionMetadata, check_name
from torchwire.service.core.spec import TrainConfig, TrainSpec
from torchwire.service.errors import InvalidArgument, NotFound
from torchwire.service.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path, max_upload_bytes=1 << 20)
    yield store
    store.close()


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "a" * 65, "x..y", "a b", "é"])
def test_names_that_could_escape_the_store_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="model_name="):
        check_name("model_name", name)


@pytest.mark.parametrize("name", ["digits", "my-model_v2.1", "A", "9lives"])
def test_good_names_pass(name: str) -> None:
    assert check_name("model_name", name) == name


def test_event_log_is_ordered_and_survives_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path, 1 << 20)
    spec = TrainSpec("m", "digits", "train", "mlp", MLPParams(), TrainConfig())
    store.registry.create_job("j1", spec)
    for n in range(3):
        store.registry.append_event("j1", "progress", {"step": n}, state="running")
    store.close()
    again = Store(tmp_path, 1 << 20)
    records = again.registry.events("j1")
    assert [r.seq for r in records] == [1, 2, 3]
    assert [r.payload["step"] for r in records] == [0, 1, 2]
    assert again.registry.events("j1", after_seq=2)[0].seq == 3
    assert again.registry.get_job("j1").state == "running"
    assert again.registry.get_job("j1").spec == spec
    again.close()


def test_model_versions_register_and_delete(store: Store, tmp_path: Path) -> None:
    config = ModelConfig("mlp", MLPParams((4,)), (3,), 2)
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, config.build(), config, 1, {"loss": 0.5})
    spec = TrainSpec("m", "digits", "train", "mlp", MLPParams((4,)), TrainConfig())
    meta = VersionMetadata("classification", (3,), "float32", 2, ("a", "b"), spec, {}, 1, ())
    assert store.versions.register("m", meta, job_id="job1", checkpoint=checkpoint) == 1
    assert store.versions.register("m", meta, job_id="job2", checkpoint=checkpoint) == 2
    assert store.versions.get("m", 0).version == 2
    stored = store.versions.get("m", 2).metadata
    assert stored.training == spec
    assert stored.checkpoint_sha256  # set by the store, checked on load
    assert (
        store.versions.verified_checkpoint(store.versions.get("m", 1)).read_bytes()
        == checkpoint.read_bytes()
    )
    assert store.versions.delete("m", 2) == [2]
    assert store.versions.get("m", 0).version == 1
    with pytest.raises(NotFound, match="no version 2"):
        store.versions.get("m", 2)
    assert (
        store.versions.register("m", meta, job_id="job3", checkpoint=checkpoint) == 3
    )  # never reused
    assert store.versions.delete("m", 0) == [1, 3]
    assert not store.layout.model_dir("m").exists()
    with pytest.raises(NotFound):
        store.versions.versions("m")


def test_upload_is_atomic_and_memory_mapped(store: Store) -> None:
    x = np.arange(60, dtype=np.float64).reshape(10, 2, 3)
    y = np.arange(10) % 3

    def chunks(fail_after: int | None = None):
        for start in range(0, 10, 4):
            if fail_after is not None and start >= fail_after:
                raise InvalidArgument("client sent garbage")
            yield x[start : start + 4], y[start : start + 4]

    info = store.datasets.upload("ds", "train", ["a", "b", "c"], chunks())
    assert info.splits == {"train": 10}
    assert info.feature_shape == (2, 3)
    location = store.datasets.locate("ds", "train")
    dataset = location.open()
    assert isinstance(dataset.features, np.memmap)
    np.testing.assert_array_equal(dataset.features, x.astype(np.float32))
    features, target = dataset[7]
    assert features.dtype.is_floating_point
    assert int(target) == 1

    # A failed re-upload leaves the old split intact and no scratch files.
    with pytest.raises(InvalidArgument):
        store.datasets.upload("ds", "train", [], chunks(fail_after=4))
    np.testing.assert_array_equal(
        store.datasets.locate("ds", "train").open().features, x.astype(np.float32)
    )
    assert [p.name for p in store.layout.datasets.iterdir()] == ["ds"]

    # A test split must match the train split's sample shape.
    with pytest.raises(InvalidArgument, match="feature_shape"):
        store.datasets.upload(
            "ds", "test", [], iter([(np.zeros((2, 5), np.float32), np.zeros(2, np.int64))])
        )
    with pytest.raises(NotFound, match="no 'test' split"):
        store.datasets.locate("ds", "test")
