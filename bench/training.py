"""Training through the service against the classic tutorial loop: same data, model,
hyperparameters and epochs."""

import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchwire.client import Client
from torchwire.service.core.architectures import MLPParams, ModelConfig
from torchwire.service.core.datasets import BUILTIN_DATASETS

EPOCHS, BATCH, LR = 15, 64, 1e-3


class TutorialDataset(Dataset):
    """The classic custom Dataset: one sample per __getitem__."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return torch.tensor(self.images[index]), torch.tensor(self.labels[index])


def classic_loop() -> dict:
    """DataLoader(batch_size, shuffle=True), then zero_grad, forward, loss, backward, step."""
    torch.manual_seed(0)
    x, y = BUILTIN_DATASETS["digits"].load("train")
    x_test, y_test = BUILTIN_DATASETS["digits"].load("test")
    loader = DataLoader(TutorialDataset(x, y), batch_size=BATCH, shuffle=True)
    model = ModelConfig("mlp", MLPParams(), (1, 8, 8), 10).build()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    begin = time.perf_counter()
    for _ in range(EPOCHS):
        model.train()
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - begin
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    return {"samples_per_s": EPOCHS * len(y) / seconds, "seconds": seconds, "accuracy": accuracy}


def service(client: Client, name: str = "bench-train", **options: Any) -> dict:
    """The same training as a torchwire job (no validation split, no early stopping);
    `options` override the job's settings."""
    begin = time.perf_counter()
    settings = {
        "epochs": EPOCHS,
        "batch_size": BATCH,
        "learning_rate": LR,
        "val_fraction": 0,
        "patience": 0,
        "seed": 0,
        **options,
    }
    final = client.train(name, "digits", **settings).wait()
    wall = time.perf_counter() - begin
    seconds = sum(m.seconds for m in final.history)
    samples = sum(m.samples_per_second * m.seconds for m in final.history)
    accuracy = client.evaluate(name, "digits").metrics["accuracy"]
    return {
        "samples_per_s": samples / seconds,
        "seconds": seconds,
        "job_wall_s": wall,
        "accuracy": accuracy,
    }


DDP_PROCESSES = 2


def distributed(client: Client) -> dict:
    """The small CNN on the digits in one process, then in DDP_PROCESSES DDP processes on
    gloo with the per-process batch divided alike, so both make the same updates. Both on
    the CPU: on a machine with fewer GPUs than processes, nccl is refused."""
    common = {"architecture": "cnn", "channels": [32, 64], "epochs": 5, "device": "cpu"}
    single = service(client, "bench-single", **common)
    ddp = service(
        client,
        "bench-ddp",
        **{**common, "batch_size": BATCH // DDP_PROCESSES},
        distributed={"nproc_per_node": DDP_PROCESSES},
    )
    return {"single": single, "ddp": ddp}
