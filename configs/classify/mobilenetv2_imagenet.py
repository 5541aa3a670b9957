r"""MobileNet-v2 1.0x / 1.4x on ImageNet, the compact baseline of Table 3 (paper 4.3).

    python -m classify.main --config=configs/classify/mobilenetv2_imagenet.py:width=1.4 --workdir=runs/mnv2_14

Args: width (1.0 | 1.4), kernel (kind of the depthwise convs; default C3), data (default
imagenet2012), runlocal (width 0.25, three short stages, 20 steps on 32 px digits unless data is
given). Paper 4.5: 100 epochs, batch 256, cosine from 0.1, weight decay 4e-5 for the compact
models (never on depthwise kernels). Parameters: 3.50M / 6.11M.

Data: TFDS 'imagenet2012' (see configs/classify/resnet50_imagenet.py): put
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/ and run once,
with TensorFlow installed, `tfds build imagenet2012 --data_dir=<data_dir> --file_format=array_record`
(data_dir: --config.input.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets).
"""

from configs.classify.common import ARG_CHOICES, imagenet_config
from sympad.train.config import parse_config_arg


def get_config(arg=None):
    args = parse_config_arg(
        arg,
        dict(width=1.0, kernel="C3", data="", mixup=0.0, cutout=0, runlocal=False),
        choices=ARG_CHOICES,
    )
    config = imagenet_config(
        args,
        model=dict(name="mobilenetv2", width=args.width, stem_kernel="C3", downsample="auto", dropout_rate=0.2),
        tiny_model=dict(width=0.25, stages=((1, 8, 1, 1), (6, 16, 2, 2), (6, 24, 1, 2))),
    )
    config.optimizer.weight_decay = 4e-5  # the compact models' (paper 4.5)
    return config
