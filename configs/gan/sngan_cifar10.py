r"""SNGAN ResNet (32x32) on CIFAR-10 with any generator kernel kind (paper 4.4, Table 4).

    python -m gan.main --config=configs/gan/sngan_cifar10.py:kernel=C2sp --workdir=runs/sngan_c2sp

Args (after the colon): kernel (C3 | C2 | C2sp | C4 | C4sp; the generator's convs, widths x1.5 for
C2/C2sp and x0.75 for C4/C4sp), data (default cifar10 via TFDS; 'folder:PATH' for the CIFAR-10 JPEG
folders with train/ and test/, 'digits', 'synthetic'), loss (ns | hinge; default ns, hinge when
conditional), norm (none | batch: G normalization; default none, batch when conditional),
conditional (class-conditional G and a projection D, labels from the data), diffaugment (DiffAugment
policies joined by '+', e.g. color+translation+cutout), ema (keep an EMA of G, decay 0.9999),
lr_decay (linear to 0), budget (table4: 200k D steps; fig5: 500k), eval (FID/IS every 5k steps
through gan.metrics), seed, seeds (train seeds seed .. seed+seeds-1 at once, one vmapped program;
config.num_seeds), runlocal.
Fields (gan.fields.GAN_FIELDS; `python -m gan.main --helpfull` lists each with its default, allowed
values and meaning), e.g. --config.optimizer.learning_rate=1e-4; the loop's, shared with classify
(sympad.train.config.LOOP_FIELDS): log_every, checkpoint_every, eval_every (train steps; 0 = only at
the end), max_checkpoints, host_data=true (stream batches from the host), conv_implementation (C*sp
formulation, sympad.IMPLEMENTATIONS); sample_every is the GAN's.

runlocal: a few minutes on a 2-core CPU; the demo, on the bundled sklearn digits (16x16, G widths
32 for C3 / 48 for C2sp, D 32, batch 32, n_critic 1, 2000 steps; gan.digits_quality scores in metrics.jsonl):

    python -m gan.main --config=configs/gan/sngan_cifar10.py:kernel=C2sp,data=digits,runlocal --workdir=runs/demo

The conditional demo (one row of samples per digit; digits/class_agreement in metrics.jsonl):

    python -m gan.main --config=configs/gan/sngan_cifar10.py:kernel=C2sp,data=digits,conditional,runlocal \
        --workdir=runs/demo_cond
"""

from configs.gan.common import ARG_CHOICES, ARGS, base_config, shrink_for_local_run
from sympad.train.config import parse_config_arg


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS, choices=ARG_CHOICES)
    config = base_config(args)
    if args.runlocal:
        shrink_for_local_run(config, default_data=ARGS["data"])
    return config
