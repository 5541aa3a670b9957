"""Trains the offline feature network (``gan.metrics.offline``) on the CIFAR-10 JPEG folders.

    python -m gan.metrics.offline_train --data_dir=/tmp/cifar10/cifar10-jpeg \\
        --out=gan/metrics/weights/offline_cifar10.npz --epochs=5
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gan.metrics.offline import (
    OFFLINE_NAME,
    OFFLINE_WEIGHTS,
    OfflineCNN,
    offline_apply_fn,
    preprocess,
    save_offline_weights,
)
from sympad.train import data

__all__ = ["evaluate_accuracy", "load_image_folder", "main", "train_offline"]


def load_image_folder(
    root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads ``root/<class>/*.jpg`` (classes in sorted order) → (uint8 (N,H,W,3), int32 (N,)).

    The data layer's image-folder loader (``sympad.train.data.load('folder:ROOT')``, decoded once
    into its cache, ``cache_dir`` or the default): the same images, in the same order, as training reads.
    """
    root = Path(root)
    if not root.is_dir() or not any(p.is_dir() for p in root.iterdir()):
        raise ValueError(f"root: no class folders under {root}")
    dataset = data.load(f"folder:{root}", "train", cache_dir=cache_dir)
    return np.asarray(dataset.images), dataset.labels


def _augment(key: jax.Array, x: jax.Array) -> jax.Array:
    # Standard CIFAR augmentation: random 4-px translation (reflect pad + crop) and horizontal flip.
    b, h, w, _ = x.shape
    k1, k2, k3 = jax.random.split(key, 3)
    padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    dy = jax.random.randint(k1, (b,), 0, 9)
    dx = jax.random.randint(k2, (b,), 0, 9)
    crop = jax.vmap(lambda im, y0, x0: jax.lax.dynamic_slice(im, (y0, x0, 0), (h, w, 3)))
    x = crop(padded, dy, dx)
    flip = jax.random.bernoulli(k3, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)


def train_offline(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int = 5,
    batch_size: int = 128,
    learning_rate: float = 0.1,
    weight_decay: float = 5e-4,
    seed: int = 0,
    log=print,
) -> tuple[dict, float]:
    """Trains :class:`OfflineCNN` (SGD-Nesterov, one-cycle cosine LR). Returns (variables, test acc)."""
    model = OfflineCNN()
    x_train, y_train = train
    steps_per_epoch = len(x_train) // batch_size
    total = epochs * steps_per_epoch
    key = jax.random.PRNGKey(seed)
    variables = model.init(key, jnp.zeros((1, 32, 32, 3)), train=False)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, total // 15), total)
    # Weight decay on kernels only (not BN scales/biases).
    mask = jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key == "kernel", variables["params"])
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.sgd(schedule, momentum=0.9, nesterov=True),
    )
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, batch_stats, opt_state, images, labels, key):
        x = _augment(key, preprocess(images))

        def loss_fn(p):
            (_, logits), updates = model.apply(
                {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (updates["batch_stats"], logits)

        (loss, (new_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss, acc

    x_train_dev, y_train_dev = jnp.asarray(x_train), jnp.asarray(y_train)
    t0 = time.time()
    for epoch in range(epochs):
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), len(x_train))
        losses, accs = [], []
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            params, batch_stats, opt_state, loss, acc = step(
                params, batch_stats, opt_state, x_train_dev[idx], y_train_dev[idx],
                jax.random.fold_in(key, 10**6 + epoch * steps_per_epoch + i),
            )
            losses.append(loss)
            accs.append(acc)
            if i % 50 == 0:
                log(f"epoch {epoch} step {i}/{steps_per_epoch} loss {float(loss):.3f} "
                    f"({time.time() - t0:.0f}s)")
        variables = {"params": params, "batch_stats": batch_stats}
        test_acc = evaluate_accuracy(variables, *test, model=model)
        log(f"epoch {epoch}: train loss {float(jnp.mean(jnp.stack(losses))):.3f} "
            f"train acc {float(jnp.mean(jnp.stack(accs))):.4f} test acc {test_acc:.4f} "
            f"({time.time() - t0:.0f}s)")
    return variables, test_acc


def evaluate_accuracy(variables: Any, images: np.ndarray, labels: np.ndarray, *,
                      model: OfflineCNN | None = None, batch_size: int = 500) -> float:
    """Top-1 accuracy of the classifier on uint8 images (eval-mode BN)."""
    apply = offline_apply_fn(variables, model=model)
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = apply(jnp.asarray(images[i : i + batch_size]))["logits"]
        correct += int(jnp.sum(jnp.argmax(logits, -1) == jnp.asarray(labels[i : i + batch_size])))
    return correct / len(images)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the offline CIFAR-10 feature network.")
    parser.add_argument("--data_dir", required=True, help="folder holding train/<class>/*.jpg and test/...")
    parser.add_argument("--out", default=str(OFFLINE_WEIGHTS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    t0 = time.time()
    train = load_image_folder(data_dir / "train")
    test = load_image_folder(data_dir / "test")
    print(f"loaded {len(train[0])} train / {len(test[0])} test images ({time.time() - t0:.0f}s)", flush=True)
    variables, test_acc_float32 = train_offline(
        train, test, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, log=lambda s: print(s, flush=True),
    )
    # The file stores float16: record the accuracy of the weights as stored.
    variables = jax.tree.map(lambda x: np.asarray(np.asarray(x, np.float16), np.float32), variables)
    test_acc = evaluate_accuracy(variables, *test)
    metadata = {
        "name": OFFLINE_NAME,
        "architecture": "OfflineCNN(stage_features=(32,64,128,256), stage_depths=(1,2,2,1), C3)",
        "feature_dim": 256,
        "test_accuracy": test_acc,
        "test_accuracy_float32": test_acc_float32,
        "storage": "float16 (computed in float32)",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "train_seconds": round(time.time() - t0),
        "command": (f"python -m gan.metrics.offline_train --data_dir=<cifar10-jpeg> --out={args.out} "
                    f"--epochs={args.epochs} --batch_size={args.batch_size} "
                    f"--learning_rate={args.learning_rate} --seed={args.seed}"),
        "data": "CIFAR-10 JPEG folders (shared/data/cifar10-{train,test}.tar.gz)",
        "jax_version": jax.__version__,
    }
    save_offline_weights(args.out, variables, metadata=metadata)
    print(json.dumps(metadata, indent=1))
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
