"""The device campaign: a committed plan of sub-10-minute GPU experiments, the runner that works
through it inside a deadline (packing a group's GAN entries on one GPU and scoring their samples
there), the CPU's check of what comes back, and the report.

    bash paper/device/prepare.sh                       # here: what the GPU run carries
    bash paper/device/run.sh OUT                       # GPU machine (python -m paper.reproduce --budget=device)
    python -m paper.reproduce --evaluate --out=OUT     # CPU: merge, check the device's features
    python -m paper.reproduce --report                 # REPRODUCTION.md
"""

from paper.campaign.plan import CONFIG_KEYS, Entry, build_plan, load_plan
from paper.campaign.report import render_report
from paper.campaign.runner import run_plan

__all__ = ["CONFIG_KEYS", "Entry", "build_plan", "load_plan", "render_report", "run_plan"]
