"""A small Keras CNN on scikit-learn's bundled handwritten digits (8x8 images, no download).

It writes what TensorBoard and gpubox read: the standard Keras TensorBoard callback (epoch_loss, epoch_accuracy),
one custom scalar written with an explicit step through tf.summary.create_file_writer, a tf.keras.metrics
metric, and a checkpoint in checkpoints/. Runs in well under a minute on 2 CPU cores.

    python train.py [--epochs 8] [--multi-worker]

Under `gpubox run`, GPUBOX_TB_DIR points into the project's logs/ folder so every run shows up in TensorBoard.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def build_model() -> tf.keras.Model:
    model = tf.keras.Sequential(
        [
            tf.keras.layers.Input(shape=(8, 8, 1)),
            tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            tf.keras.layers.MaxPooling2D(),
            tf.keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(64, activation="relu"),
            tf.keras.layers.Dropout(0.2),
            tf.keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


class ValidationErrorRate(tf.keras.callbacks.Callback):
    """Writes one custom scalar per epoch, with an explicit step, next to Keras's own logs."""

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "custom"))

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        with self.writer.as_default():
            tf.summary.scalar("val_error_rate", 1.0 - float(logs.get("val_accuracy", 0.0)), step=epoch)
        self.writer.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--multi-worker", action="store_true", help="train with MultiWorkerMirroredStrategy (TF_CONFIG set)"
    )
    args = parser.parse_args()
    tf.keras.utils.set_random_seed(0)

    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(images, labels, test_size=0.2, random_state=0)

    strategy = (
        tf.distribute.MultiWorkerMirroredStrategy() if args.multi_worker else tf.distribute.get_strategy()
    )
    with strategy.scope():
        model = build_model()

    log_dir = os.environ.get("GPUBOX_TB_DIR", os.path.join("logs", "local"))
    os.makedirs("checkpoints", exist_ok=True)
    # Only the chief writes the checkpoint when several workers train together.
    chief = (
        not args.multi_worker
        or json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0) == 0
    )
    callbacks: list[tf.keras.callbacks.Callback] = [
        tf.keras.callbacks.TensorBoard(log_dir=log_dir),
        ValidationErrorRate(log_dir),
    ]
    if chief:
        callbacks.append(tf.keras.callbacks.ModelCheckpoint("checkpoints/digits.keras", save_best_only=True))
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=args.epochs,
        batch_size=args.batch_size,
        callbacks=callbacks,
        verbose=2,
    )
    final = {key: round(float(values[-1]), 4) for key, values in history.history.items()}
    print("final " + json.dumps(final), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
