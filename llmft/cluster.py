"""One training job over several Slurm tasks: torch's rendezvous taken from the job's own environment.

``hydra/launcher=slurm-multinode`` asks Slurm for nodes x GPUs and starts one task per GPU; each task runs the
Hydra job. No launcher (torchrun, accelerate) sets ``RANK``, ``WORLD_SIZE`` or ``MASTER_ADDR`` there, so each task
derives them from Slurm's variables (submitit's ``TorchDistributedEnvironment``: the first host of the job is the
master, the port a function of the job id) before accelerate initialises the process group.
"""

import logging
import os

log = logging.getLogger(__name__)
# Set inside a Slurm job step (srun, as submitit starts its tasks) and by submitit's local executor.
JOB_STEP_VARIABLES = ("SLURM_STEP_ID", "SUBMITIT_LOCAL_JOB_ID")


def rendezvous_from_job() -> bool:
    """Export ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``
    for torch's ``env://`` rendezvous when this process is one task of a several-task job and no launcher did.

    Returns:
        Whether it did; False under a launcher, outside a job step, or in a job of one task.
    """
    if "RANK" in os.environ or not any(v in os.environ for v in JOB_STEP_VARIABLES):
        return False
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks <= 1:
        return False
    # each process keeps every GPU visible: accelerate takes the one of its LOCAL_RANK
    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info("Rendezvous from the job: task %d of %d (local %d) at %s:%d", env.rank, env.world_size, env.local_rank,
             env.master_addr, env.master_port)
    return True
