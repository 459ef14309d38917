"""`make demo`: the whole tour against a real server on a free local port with a temporary store.

Load the digits, upload them, train with a progress bar, evaluate on held-out data,
predict a few samples beside their true labels, export to ONNX and serve from ONNX Runtime,
then shut the server down cleanly.
"""

import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from torchwire.client import Client

REQUIRED_ACCURACY = 0.95


def start_server(
    store: str, *flags: str, stderr: Any = None, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Starts `torchwire serve` on port 0 and reads the address it bound; `stderr` (a file)
    takes the server's log, `env` replaces its environment."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torchwire.service",
            "--address",
            "127.0.0.1:0",
            "--store",
            store,
            "--log-level",
            "WARNING",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("torchwire serving on "):
        process.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return process, line.rsplit(" ", 1)[1].strip()


def load_digits_split() -> tuple[np.ndarray, ...]:
    """The 8x8 digits as N,C,H,W float32 in [0, 1], with a stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    return tuple(
        train_test_split(
            images,
            digits.target.astype(np.int64),
            test_size=0.2,
            stratify=digits.target,
            random_state=42,
        )
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="torchwire-demo-") as store:
        server, address = start_server(store)
        print(f"1. server started on {address} (store {store})")
        try:
            accuracy = tour(address)
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=60)
        print(f"8. server shut down cleanly (exit code {code})")
    if code != 0 or accuracy < REQUIRED_ACCURACY:
        print(f"FAILED: accuracy {accuracy:.4f} (need {REQUIRED_ACCURACY}), exit code {code}")
        return 1
    return 0


def tour(address: str) -> float:
    with Client(address) as client:
        client.wait_ready()
        x_train, x_test, y_train, y_test = load_digits_split()
        classes = [str(d) for d in range(10)]
        client.upload_dataset("digits-demo", x_train, y_train, split="train", classes=classes)
        client.upload_dataset("digits-demo", x_test, y_test, split="test", classes=classes)
        print(
            f"2. uploaded the digits: {len(x_train)} training and {len(x_test)} held-out "
            "images of 1x8x8"
        )

        print("3. training a CNN (early stopping on a 10% validation split)")
        job = client.train(
            "digits-cnn",
            "digits-demo",
            architecture="cnn",
            epochs=30,
            batch_size=64,
            learning_rate=2e-3,
            patience=5,
            seed=0,
        )
        final = job.wait(progress=True)
        print(
            f"   job {final.id}: {len(final.history)} epochs, kept epoch {final.best_epoch}, "
            f"registered digits-cnn v{final.model_version} on {final.device}"
        )

        result = client.evaluate("digits-cnn", "digits-demo", split="test")
        accuracy = result.metrics["accuracy"]
        print(
            f"4. held-out accuracy: {accuracy:.4f} on {result.num_samples} images "
            f"(loss {result.loss:.4f})"
        )
        worst = min(result.per_class, key=lambda c: c.recall)
        print(
            f"   hardest digit: {worst.name} (recall {worst.recall:.3f}, "
            f"precision {worst.precision:.3f})"
        )

        _predict_and_export(client, x_test, y_test)
        return accuracy


def _predict_and_export(client: Client, x_test: np.ndarray, y_test: np.ndarray) -> None:
    """Steps 5-7: Predict, the registry, and serving the ONNX export."""
    prediction = client.predict("digits-cnn", x_test[:8], top_k=2)
    print("5. predictions for 8 held-out images:")
    assert prediction.top_labels is not None
    assert prediction.top_probabilities is not None
    for truth, labels, probs in zip(
        y_test[:8], prediction.top_labels, prediction.top_probabilities, strict=True
    ):
        mark = "ok" if labels[0] == str(truth) else "WRONG"
        print(
            f"   true {truth}  predicted {labels[0]} ({probs[0]:.3f}), "
            f"runner-up {labels[1]} ({probs[1]:.3f})  {mark}"
        )

    model = client.model("digits-cnn")
    print(
        f"6. model registry: digits-cnn versions {[v.version for v in model.versions]}, "
        f"input {model.versions[-1].input_dtype}{list(model.versions[-1].input_shape)}"
    )
    eager = client.predict("digits-cnn", x_test, outputs=["top_k"], runtime="eager")
    with tempfile.TemporaryDirectory() as out:
        artifact = client.export("digits-cnn", "onnx", Path(out) / "digits-cnn.onnx")
    onnx = client.predict("digits-cnn", x_test, outputs=["top_k"])
    assert eager.top_indices is not None
    assert onnx.top_indices is not None
    agree = (onnx.top_indices[:, 0] == eager.top_indices[:, 0]).mean()
    print(
        f"7. exported to ONNX ({artifact.size_bytes} bytes, max diff from PyTorch "
        f"{artifact.max_abs_diff:.1e}); Predict now runs on {onnx.runtime} ({onnx.device}) "
        f"and agrees with eager PyTorch on {agree:.1%} of the held-out images"
    )


if __name__ == "__main__":
    sys.exit(main())
