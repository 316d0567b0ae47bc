"""A small Keras CNN on scikit-learn's bundled handwritten digits (8x8 images, no download).

It writes what TensorBoard and gpubox read: the standard Keras TensorBoard callback (epoch_loss, epoch_accuracy),
one custom scalar written with an explicit step through tf.summary.create_file_writer, a tf.keras.metrics
metric, and a checkpoint in checkpoints/. Runs in well under a minute on 2 CPU cores.

    python train.py [--epochs 8] [--lr 0.001] [--units 64] [--multi-worker]

Under `gpubox run`, GPUBOX_TB_DIR points into the project's logs/ folder so every run shows up in TensorBoard.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def build_model(lr: float = 1e-3, units: int = 64) -> tf.keras.Model:
    model = tf.keras.Sequential(
        [
            tf.keras.layers.Input(shape=(8, 8, 1)),
            tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            tf.keras.layers.MaxPooling2D(),
            tf.keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(units, activation="relu"),
            tf.keras.layers.Dropout(0.2),
            tf.keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(lr),
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


def train_multi_worker(
    args: argparse.Namespace, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
) -> dict[str, float]:
    """The same model trained by every worker of TF_CONFIG's cluster with MultiWorkerMirroredStrategy.

    A custom loop, because Keras 3's model.fit does not run under MultiWorkerMirroredStrategy yet
    (keras-team/keras#20585). Each step's gradients are all-reduced across workers, so every worker holds the
    same weights and prints the same metrics; logs go where the single-host path writes them.
    """
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    chief = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0) == 0
    global_batch = args.batch_size * strategy.num_replicas_in_sync
    with strategy.scope():
        model = build_model(args.lr, args.units)
    per_example = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    def dataset(x: np.ndarray, y: np.ndarray, shuffle: bool) -> tf.distribute.DistributedDataset:
        data = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int64)))
        if shuffle:
            data = data.shuffle(len(x), seed=0, reshuffle_each_iteration=True)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return strategy.experimental_distribute_dataset(
            data.batch(global_batch, drop_remainder=True).with_options(options)
        )

    def sums(labels: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        losses = per_example(labels, logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, axis=1), labels), tf.float32)
        return tf.reduce_sum(losses), tf.reduce_sum(correct), tf.cast(tf.size(labels), tf.float32)

    def train_replica(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.nn.compute_average_loss(per_example(y, logits), global_batch_size=global_batch)
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return sums(y, logits)

    def eval_replica(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return sums(y, model(x, training=False))

    @tf.function
    def train_step(batch: tuple[tf.Tensor, tf.Tensor]) -> list[tf.Tensor]:
        return [strategy.reduce("SUM", v, axis=None) for v in strategy.run(train_replica, args=batch)]

    @tf.function
    def eval_step(batch: tuple[tf.Tensor, tf.Tensor]) -> list[tf.Tensor]:
        return [strategy.reduce("SUM", v, axis=None) for v in strategy.run(eval_replica, args=batch)]

    log_dir = os.environ.get("GPUBOX_TB_DIR", os.path.join("logs", "local"))
    writers = {
        name: tf.summary.create_file_writer(os.path.join(log_dir, name))
        for name in ("train", "validation", "custom")
    }
    train_data, val_data = dataset(x_train, y_train, True), dataset(x_val, y_val, False)
    final: dict[str, float] = {}
    for epoch in range(args.epochs):
        started = time.monotonic()
        totals = {"train": np.zeros(3), "validation": np.zeros(3)}
        steps = 0
        for batch in train_data:
            totals["train"] += [float(t) for t in train_step(batch)]
            steps += 1
        for batch in val_data:
            totals["validation"] += [float(t) for t in eval_step(batch)]
        loss, correct, seen = totals["train"]
        val_loss, val_correct, val_seen = totals["validation"]
        final = {
            "accuracy": round(correct / seen, 4),
            "loss": round(loss / seen, 4),
            "val_accuracy": round(val_correct / val_seen, 4),
            "val_loss": round(val_loss / val_seen, 4),
        }
        for name, prefix in (("train", ""), ("validation", "val_")):
            with writers[name].as_default():
                tf.summary.scalar("epoch_loss", final[prefix + "loss"], step=epoch)
                tf.summary.scalar("epoch_accuracy", final[prefix + "accuracy"], step=epoch)
        with writers["custom"].as_default():
            tf.summary.scalar("val_error_rate", 1.0 - final["val_accuracy"], step=epoch)
        for writer in writers.values():
            writer.flush()
        print(f"Epoch {epoch + 1}/{args.epochs}", flush=True)
        took = time.monotonic() - started
        print(
            f"{steps}/{steps} - {took:.0f}s - {1000 * took / max(steps, 1):.0f}ms/step - "
            + " - ".join(f"{key}: {value:.4f}" for key, value in final.items()),
            flush=True,
        )
    if chief:  # only the chief writes the checkpoint when several workers train together
        model.save("checkpoints/digits.keras")
    return final


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument("--units", type=int, default=64, help="units of the dense layer")
    parser.add_argument(
        "--multi-worker", action="store_true", help="train with MultiWorkerMirroredStrategy (TF_CONFIG set)"
    )
    args = parser.parse_args()
    tf.keras.utils.set_random_seed(0)

    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(images, labels, test_size=0.2, random_state=0)
    os.makedirs("checkpoints", exist_ok=True)
    if args.multi_worker:
        final = train_multi_worker(args, x_train, y_train, x_val, y_val)
        print("final " + json.dumps(final), flush=True)
        return 0

    model = build_model(args.lr, args.units)
    log_dir = os.environ.get("GPUBOX_TB_DIR", os.path.join("logs", "local"))
    callbacks: list[tf.keras.callbacks.Callback] = [
        tf.keras.callbacks.TensorBoard(log_dir=log_dir),
        ValidationErrorRate(log_dir),
        tf.keras.callbacks.ModelCheckpoint("checkpoints/digits.keras", save_best_only=True),
    ]
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
