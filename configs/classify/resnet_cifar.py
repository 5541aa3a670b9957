r"""ResNet without bottleneck (depth 6n+2) on CIFAR-10 with any kernel kind (paper 4.1, Figure 4 left).

    python -m classify.main --config=configs/classify/resnet_cifar.py:depth=56,kernel=C2sp --workdir=runs/r56_c2sp

Args (after the colon): depth (6n+2, n = 3..24; default 20), kernel (C3 | C2 | C2sp | C4 | C4sp),
data (default cifar10; 'digits' / 'synthetic' / 'folder:PATH' work too), mixup (alpha, 0 = off),
cutout (square side, 0 = off), runlocal (a ~1 min CPU run: depth 8, width 8, 20 steps, digits
unless data is given). The stem stays C3 (the paper's FLOPs need it; --config.model.stem_kernel=C2sp
to change); downsampling: --config.model.downsample=auto|pool|stride (auto: 2x2 average pool
then a stride-1 conv for even kernels, stride-2 conv for C3). CIFAR-10 from the JPEG folders:
data=folder:/path/to/cifar10-jpeg (with train/ and test/ subfolders).
Fields (classify.fields.CLASSIFY_FIELDS; `python -m classify.main --helpfull` lists each with its
default, allowed values and meaning), e.g. --config.optimizer.learning_rate=0.05; the loop's,
shared with gan (sympad.train.config.LOOP_FIELDS): log_every, eval_every and
checkpoint_every (train steps; 0 = only at the end; -n = every n epochs, the default -1),
max_checkpoints, host_data=true (stream batches from the host), conv_implementation.
"""

from configs.classify.common import ARG_CHOICES, base_config, shrink_for_local_run
from sympad.train.config import parse_config_arg


def get_config(arg=None):
    args = parse_config_arg(
        arg,
        dict(depth=20, kernel="C3", data="", mixup=0.0, cutout=0, runlocal=False),
        choices=ARG_CHOICES,
    )
    data = args.data or ("digits" if args.runlocal else "cifar10")
    config = base_config(
        model=dict(name="resnet_cifar", depth=args.depth, width=16, stem_kernel="C3", downsample="auto"),
        kernel=args.kernel,
        data=data,
        runlocal=args.runlocal,
    )
    config.mixup_alpha = args.mixup
    config.cutout = args.cutout
    if args.runlocal:
        shrink_for_local_run(config, tiny_model=dict(depth=8, width=8))
    return config
