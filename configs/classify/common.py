"""The classification suite's defaults, in one place: the paper's CIFAR training (section 4.5).

``configs/classify/*.py`` start from :func:`base_config` around their model and change a few
fields. The loop's keys (log_every, eval_every, checkpoint_every, max_checkpoints, host_data,
conv_implementation) are the shared vocabulary of ``sympad.train.config.LOOP_FIELDS``.
"""

from collections.abc import Mapping
from typing import Any

import ml_collections

from sympad.train.config import add_loop_fields

#: Classes of the datasets the configs know; other data (folder:PATH) takes its count from the files.
NUM_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000, "digits": 10, "synthetic": 10}


def base_config(*, model: Mapping[str, Any], kernel: str, data: str, runlocal: bool) -> ml_collections.ConfigDict:
    """The paper's CIFAR training defaults (section 4.5) around a ``model`` block.

    Args:
      model: ``config.model`` fields: ``name`` (a ``classify.models.MODELS``
        family) and that family's keyword fields (``kernel`` comes from the
        top-level ``config.kernel``).
      kernel: kind of the spatial convs.
      data: a ``sympad.train.data.load`` name.
      runlocal: recorded; call :func:`shrink_for_local_run` to apply it.
    """
    config = ml_collections.ConfigDict()
    config.kernel = kernel
    config.data = data
    config.runlocal = runlocal
    config.model = ml_collections.ConfigDict(
        {"num_classes": NUM_CLASSES.get(data, 10), "dtype": "float32", **dict(model)}
    )
    config.input = ml_collections.ConfigDict(
        dict(
            image_size=0,  # 0: as stored (32 for CIFAR); ImageNet configs set 224
            max_examples=0,  # 0: the whole train split
            eval_max_examples=0,  # 0: the whole test split
            cache_dir="",  # '': sympad.train.data.default_cache_dir()
            data_dir="",  # '': $TFDS_DATA_DIR or ~/tensorflow_datasets
            crop_pad=4,
            flip=True,
        )
    )
    config.seed = 0
    config.batch_size = 64
    config.eval_batch_size = 500
    config.num_epochs = 300
    config.num_train_steps = 0  # > 0 overrides num_epochs
    config.optimizer = ml_collections.ConfigDict(
        dict(learning_rate=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4, schedule="cosine", warmup_epochs=0.0)
    )
    config.augment = True  # pad-4 crop + flip
    config.mixup_alpha = 0.0  # paper: 1.0 where "mixup" is stated
    config.cutout = 0  # side of the cutout square; 0 = off (DeVries & Taylor: 16 on CIFAR-10)
    # The loop: the test split is evaluated and a checkpoint written once per epoch (-1).
    add_loop_fields(config, log_every=100, eval_every=-1, checkpoint_every=-1, max_checkpoints=2)
    return config


def shrink_for_local_run(config: ml_collections.ConfigDict, *, tiny_model: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """``runlocal``: a ~1 minute CPU run (tiny model, 20 steps, small splits), same code path."""
    config.model.update(dict(tiny_model))
    config.batch_size = 32
    config.eval_batch_size = 128
    config.num_train_steps = 20
    config.log_every = 5
    config.eval_every = 10
    config.checkpoint_every = 10
    config.input.max_examples = 512
    config.input.eval_max_examples = 256
    return config


def imagenet_config(args: ml_collections.ConfigDict, *, model: Mapping[str, Any],
                    tiny_model: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """An ImageNet run of Table 3 (paper 4.5: 100 epochs, batch 256, 224 px) around ``model``.

    Args:
      args: from ``parse_config_arg``, with kernel, data ('' for imagenet2012, or digits at 32 px
        with runlocal), mixup, cutout and runlocal.
      model: ``config.model`` fields.
      tiny_model: what ``runlocal`` changes in them.
    """
    data = args.data or ("digits" if args.runlocal else "imagenet2012")
    config = base_config(model=model, kernel=args.kernel, data=data, runlocal=args.runlocal)
    config.input.image_size = 224 if data == "imagenet2012" else 0
    config.input.crop_pad = 16 if data == "imagenet2012" else 4
    config.batch_size = 256
    config.num_epochs = 100
    config.log_every = 500
    config.mixup_alpha = args.mixup
    config.cutout = args.cutout
    if args.runlocal:
        shrink_for_local_run(config, tiny_model=tiny_model)
    return config

