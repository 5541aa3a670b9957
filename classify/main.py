r"""Train a classification model: ``python -m classify.main --config=configs/classify/<model>.py[:args] --workdir=DIR``.

Example (a ~1 minute CPU smoke run)::

    python -m classify.main --config=configs/classify/resnet_cifar.py:kernel=C2sp,runlocal --workdir=/tmp/r8

``--helpfull`` lists every config field (classify.fields.CLASSIFY_FIELDS): default, allowed values, meaning.
"""

from classify import train
from classify.fields import CLASSIFY_FIELDS
from sympad.train.config import run_main

if __name__ == "__main__":
    run_main(train.train_and_evaluate, fields=CLASSIFY_FIELDS)
