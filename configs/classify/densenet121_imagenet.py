r"""DenseNet-121 on ImageNet with C3 or C2sp (paper 4.3, Table 3).

    python -m classify.main --config=configs/classify/densenet121_imagenet.py:kernel=C2sp --workdir=runs/dn121_c2sp

Args: kernel, data (default imagenet2012), runlocal (one layer per block, growth 8, 20 steps on
32 px digits unless data is given). Paper 4.5: 100 epochs, batch 256, cosine from 0.1, weight
decay 1e-4. Parameters: C3 7.98M, C2sp 6.79M (paper 8.0M / 6.7M).

Data: TFDS 'imagenet2012' (see configs/classify/resnet50_imagenet.py): put
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/ and run once,
with TensorFlow installed, `tfds build imagenet2012 --data_dir=<data_dir> --file_format=array_record`
(data_dir: --config.input.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets).
"""

from configs.classify.common import ARG_CHOICES, imagenet_config
from sympad.train.config import parse_config_arg


def get_config(arg=None):
    args = parse_config_arg(arg, dict(kernel="C3", data="", mixup=0.0, cutout=0, runlocal=False), choices=ARG_CHOICES)
    return imagenet_config(
        args,
        model=dict(name="densenet_imagenet", stem_kernel="C7"),
        tiny_model=dict(stage_sizes=(1, 1, 1, 1), growth=8),
    )
