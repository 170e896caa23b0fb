"""How the training stages get their `Accelerator`: the processes, devices and mixed precision come from
`accelerate launch` (dvc.yaml starts every training stage with it), never from params.yaml or a flag.

`accelerate launch` hands its configuration to the script through the environment (ACCELERATE_MIXED_PRECISION,
LOCAL_RANK, WORLD_SIZE, ...). One thing it does not hand over: on a machine without a GPU, processes started by
its multi-process launcher (torchrun) only join one process group when the script asks for the CPU. So the
CPU is asked for exactly when no CUDA device is visible; where one is, Accelerate places each process on its GPU.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator


def make_accelerator(**kwargs) -> Accelerator:
    """An Accelerator for this machine and launch configuration; `kwargs` are the script's own settings
    (gradient accumulation, data loader configuration), never processes, devices or precision."""
    return Accelerator(cpu=not torch.cuda.is_available(), **kwargs)
