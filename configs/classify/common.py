"""The classification suite's config helpers: the base config around a model, the runlocal shrink, ImageNet.

Every field, its default (the paper's CIFAR training, section 4.5), allowed values and meaning, is
declared once in ``classify.fields.CLASSIFY_FIELDS`` (``python -m classify.main --helpfull`` lists
them); ``configs/classify/*.py`` start from :func:`base_config` around their model and change a
few fields.
"""

from collections.abc import Mapping
from typing import Any

import ml_collections

from classify.fields import CLASSIFY_FIELDS
from sympad.train.config import default_config

#: Allowed values of the config-file args: the values of the fields they set.
ARG_CHOICES = {"kernel": CLASSIFY_FIELDS["kernel"].allowed}

#: Classes of the datasets the configs know; other data (folder:PATH) takes its count from the files.
NUM_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000, "digits": 10, "synthetic": 10}


def base_config(*, model: Mapping[str, Any], kernel: str, data: str, runlocal: bool) -> ml_collections.ConfigDict:
    """``CLASSIFY_FIELDS``' defaults (the paper's CIFAR training) around a ``model`` block.

    Args:
      model: ``config.model`` fields: ``name`` (a ``classify.models.MODELS``
        family) and that family's keyword fields (``kernel`` comes from the
        top-level ``config.kernel``).
      kernel: kind of the spatial convs.
      data: a ``sympad.train.data.load`` name.
      runlocal: recorded; call :func:`shrink_for_local_run` to apply it.
    """
    config = default_config(CLASSIFY_FIELDS)
    config.kernel = kernel
    config.data = data
    config.runlocal = runlocal
    config.model.num_classes = NUM_CLASSES.get(data, 10)
    config.model.update(dict(model))
    return config


def shrink_for_local_run(
    config: ml_collections.ConfigDict, *, tiny_model: Mapping[str, Any]
) -> ml_collections.ConfigDict:
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

