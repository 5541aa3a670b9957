"""The device campaign: a committed plan of sub-10-minute GPU experiments, the runner that works
through it inside a deadline (packing a group's GAN entries on one GPU and scoring their samples
there), the CPU's check of what comes back, and the report.

    bash paper/device/prepare.sh                       # here: what the GPU run carries
    bash paper/device/run.sh OUT                       # GPU machine (python -m paper.reproduce run device)
    python -m paper.reproduce evaluate --out=OUT     # CPU: merge, check the device's features
    python -m paper.reproduce report                 # REPRODUCTION.md

Modules, one concern each: ``plan`` (the entries and their budgets), ``runner`` (the queue and its
packed groups), ``processes`` (the commands it starts, the GPUs), ``artifacts`` (what a finished
entry measured), ``preflight`` (the minute before the plan), ``calibration`` (seeds per process on a
device), ``evaluate`` (scoring and the CPU's check), ``results`` (the typed records), ``report``.
"""

from paper.campaign.plan import CONFIG_KEYS, Entry, build_plan, load_plan
from paper.campaign.report import render_report
from paper.campaign.runner import run_plan

__all__ = ["CONFIG_KEYS", "Entry", "build_plan", "load_plan", "render_report", "run_plan"]
