"""``llmft-train``: compose the run's configuration with Hydra and hand it to ``llmft.pipeline.run``."""

import atexit
import logging
import os
import shutil
import sys
import tempfile

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from llmft.cluster import rendezvous_from_job
from llmft.config import schema  # noqa: F401  (registers train_schema)
from llmft.config.location import CONFIG_DIR
from llmft.config.precheck import fail, precheck
from llmft.errors import ConfigError, DeviceUnavailableError, LlmftError
from llmft.quantization import keep_out_bitsandbytes
from llmft.quiet import quiet_libraries
from llmft.run_folder import check_writable, resume_argv
from llmft.shutdown import fast_exit
from llmft.startup import quiet_collector

log = logging.getLogger("llmft")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """Run one job; returns the validation loss (what a sweeper minimises)."""
    hydra_cfg = HydraConfig.get()
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    with quiet_collector():  # torch, transformers and peft load here, after the overrides are checked
        quiet_libraries(verbose=bool(hydra_cfg.verbose))  # before the libraries load and speak
        if not sweeping:  # one run in this process (a sweep's later jobs may quantize)
            keep_out_bitsandbytes(cfg)
        from llmft.pipeline import run

    from llmft.interrupt import Interrupted

    output_dir = hydra_cfg.runtime.output_dir
    if rendezvous_from_job() and int(os.environ["RANK"]) > 0:  # a Slurm task: only rank 0 writes the run folder
        output_dir = scratch_folder()
        logging.getLogger().setLevel(logging.WARNING)
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("resume=")]
    command = f"llmft-train -m resume={hydra_cfg.sweep.dir}" if sweeping else None
    try:
        summary = run(cfg, output_dir, overrides=overrides, resume=cfg.resume is not None,
                      resume_command=command)
    except Interrupted as exc:  # the whole sweep stops too: resume=SWEEP_DIR continues it
        fail(str(exc), code=exc.exit_code)
    except KeyboardInterrupt:
        fail("stopped by Ctrl-C.", code=130)
    except LlmftError as exc:
        if sweeping:
            what = "skipped" if isinstance(exc, DeviceUnavailableError) else "failed"
            log.error("Job %s %s, the sweep goes on: %s", hydra_cfg.job.num, what, exc)
            return float("nan")
        fail(str(exc), code=1)
    except Exception:  # out of memory, a library error: recorded in summary.json; one bad point loses no others
        if not sweeping:
            raise
        log.exception("Job %s failed, the sweep goes on", hydra_cfg.job.num)
        return float("nan")
    finally:
        if sweeping:  # one run: the process ends now, and the operating system takes its memory back at once
            release_memory()
    return summary.get("eval_loss", summary.get("final_train_loss", float("nan")))


def scratch_folder() -> str:
    """A temporary run folder for a process other than the main one, removed when it exits."""
    scratch = tempfile.mkdtemp(prefix=f"llmft-rank{os.environ['RANK']}-")
    atexit.register(shutil.rmtree, scratch, True)
    return scratch


def release_memory() -> None:
    """Hydra's basic launcher runs every job in this process (joblib reuses its workers): free what a job left,
    and lift its ``hardware.emulate`` cap, before the next one."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the current device: the job's own (llmft.hardware.use_device)
        torch.cuda.set_per_process_memory_fraction(1.0)  # a job's hardware.emulate cap ends with it


def main() -> None:
    """Console script: check the overrides in seconds, then run Hydra."""
    try:
        sys.argv[1:] = resume_argv(sys.argv[1:])
    except ConfigError as exc:
        fail(str(exc))
    precheck(sys.argv[1:])
    try:
        check_writable(sys.argv[1:])
    except LlmftError as exc:
        fail(str(exc), code=1)
    if int(os.environ.get("RANK", "0")) > 0:  # `accelerate launch`, torchrun: only the main process writes a run folder
        sys.argv += [f"hydra.run.dir={scratch_folder()}", "hydra.output_subdir=null",
                     "hydra.job_logging.root.level=WARNING"]
    hydra_main()
    from llmft.sweeps.callback import FAILED_JOBS

    if FAILED_JOBS:
        fail(f"{len(FAILED_JOBS)} job(s) of the sweep failed ({', '.join(FAILED_JOBS)}); each one's summary.json "
             "says why, and the sweep table lists every job.", code=1)
    fast_exit(0)


if __name__ == "__main__":
    main()
