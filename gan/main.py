"""Trains a GAN: ``python -m gan.main --config=configs/gan/sngan_cifar10.py:kernel=C2sp --workdir=DIR``.

Resumes from ``DIR/checkpoints`` when there is a checkpoint there. See gan.train (the loop), gan.state and gan.step.
``--helpfull`` lists every config field (gan.fields.GAN_FIELDS): default, allowed values, meaning.
"""

from gan import train
from gan.fields import GAN_FIELDS
from sympad.train.config import run_main

if __name__ == "__main__":
    run_main(train.train_and_evaluate, fields=GAN_FIELDS)
