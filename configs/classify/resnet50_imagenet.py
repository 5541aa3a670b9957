r"""ResNet-50 on ImageNet with C3, C2 or C2sp, full or 0.5x width (paper 4.3, Table 3).

    python -m classify.main --config=configs/classify/resnet50_imagenet.py:kernel=C2sp,width=0.5 \
        --workdir=runs/r50x05_c2sp

Args: kernel, width (1.0 | 0.5), data (default imagenet2012), runlocal (one block per stage, 1/8
width, 20 steps on 32 px digits unless data is given). Paper 4.5: 100 epochs, batch 256, cosine
from 0.1, weight decay 1e-4. Parameters: C3 25.5M, C2sp 19.3M; 0.5x: C3 6.9M, C2/C2sp 5.35M.

Data: TFDS 'imagenet2012' read with tfds.data_source, decoded once at 224 px (shorter side
resized, centre crop) into sympad's cache (--config.input.cache_dir). ImageNet cannot be
downloaded automatically: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
<data_dir>/downloads/manual/ (data_dir: --config.input.data_dir, else $TFDS_DATA_DIR, else
~/tensorflow_datasets), then once, with TensorFlow installed:
    tfds build imagenet2012 --data_dir=<data_dir> --file_format=array_record
The test split is ImageNet's validation set. Augmentation here is the CIFAR-style pad-and-crop +
flip on the cached 224 px images, not the paper's Inception-style crops (Silberman & Guadarrama).
"""

from configs.classify.common import ARG_CHOICES, imagenet_config
from sympad.train.config import parse_config_arg


def get_config(arg=None):
    args = parse_config_arg(
        arg,
        dict(kernel="C3", width=1.0, data="", mixup=0.0, cutout=0, runlocal=False),
        choices=ARG_CHOICES,
    )
    return imagenet_config(
        args,
        model=dict(name="resnet_imagenet", width=args.width, stem_kernel="C7", downsample="auto"),
        tiny_model=dict(stage_sizes=(1, 1, 1, 1), width=args.width / 8, stem_width=16),
    )
