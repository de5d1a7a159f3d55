"""One run, one folder: claiming it, its effective configuration, and what a resume may change.

A run holds an exclusive lock on its folder for as long as it runs (``.lock``, ``fcntl.flock``: released by the
kernel when the process dies, even by ``kill -9``), and refuses a folder that already holds another run unless it
is resuming that run. The configuration the run really used - after ``hardware.auto_fit`` changed it - is saved
as ``config.yaml`` at the top of the folder; that file, not Hydra's pre-fit ``.hydra/config.yaml``, is what
``resume``, ``llmft-eval`` and ``llmft-export`` read.
"""

import fcntl
import os
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from llmft.errors import ConfigError, LlmftError
from llmft.files import atomic_write, explain_write_error, write_json

CONFIG = "config.yaml"
# Keys a resumed run may change: they decide what is logged, saved or evaluated, never the adapter's weights.
RESUMABLE = ("logger", "eval", "resume", "paths", "trainer.log_every", "trainer.eval_every", "trainer.save_every",
             "trainer.save_each_epoch", "trainer.keep_checkpoints", "hardware.preflight")
RUN_FILES = ("summary.json", "metrics.jsonl", "checkpoints", CONFIG)


class RunFolderBusy(LlmftError):
    """Another process holds the run folder, or it holds a finished run that is not being resumed."""


class RunFolder:
    """The folder of one run; ``claim`` it before writing anything there and ``release`` it at the end."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None

    def claim(self, resume: bool) -> None:
        """Take the folder's lock; refuse a folder that another run uses or (unless ``resume``) already holds.

        Raises:
            RunFolderBusy: in use, or already holding a run.
            WriteError: the folder cannot be written.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path / ".lock", "a+")
        except OSError as exc:
            raise explain_write_error(self.path, exc) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise RunFolderBusy(f"{self.path} is in use by another llmft process right now. Wait for it to end, or "
                                "give this run its own folder (hydra.run.dir=...).") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()
        held = [name for name in RUN_FILES if (self.path / name).exists()]
        if held and not resume:
            self.release()
            raise RunFolderBusy(f"{self.path} already holds a run ({', '.join(held)}); a new run never writes over "
                                f"another. Continue it with `llmft-train resume={self.path}`, or give this run its "
                                "own folder (leave hydra.run.dir at its default).")

    def record_refusal(self, error: str, overrides) -> None:
        """Mark a folder that Hydra already made (``.hydra/``, ``train.log``) for a run refused before it started
        (a key its callable does not take) as a failed run, so that it does not look like a run that left nothing;
        a folder that does not exist, or that holds a run, is left alone."""
        if self.path.is_dir() and not any((self.path / name).exists() for name in RUN_FILES):
            write_json(self.path / "summary.json", {"status": "failed", "error": error, "overrides": list(overrides)})

    def release(self) -> None:
        """Give the lock back (the kernel does it too if the process dies)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def save_config(self, cfg: DictConfig) -> None:
        """Write the effective (resolved) configuration as ``config.yaml``, atomically."""
        atomic_write(self.path / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))

    def saved_config(self) -> Optional[DictConfig]:
        """The effective configuration this folder's run saved, or None if it stopped before saving one."""
        path = self.path / CONFIG
        return OmegaConf.load(path) if path.is_file() else None


def check_resumable(saved: DictConfig, cfg: DictConfig) -> None:
    """Refuse a resume whose configuration differs from the saved one in a key that changes the result.

    Raises:
        ConfigError: naming each changed key with its saved and new values.
    """
    old, new = _flatten(OmegaConf.to_container(saved, resolve=True)), \
        _flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = [key for key in sorted(set(old) | set(new))
               if old.get(key) != new.get(key) and not key.startswith(tuple(p + "." for p in RESUMABLE))
               and key not in RESUMABLE]
    if changed:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"resuming would change what this run trains ({shown}). A resumed run keeps its "
                          "configuration; only these may change: " + ", ".join(RESUMABLE) + ". Start a new run "
                          "for the other change.")


def _flatten(node, prefix: str = "") -> Dict[str, object]:
    if isinstance(node, dict):
        out: Dict[str, object] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _resumable(new: List[str], saved: List[str]) -> List[str]:
    """``new``, or a ConfigError naming the first override that may change what the stopped run trains."""
    before = {_key(o): o for o in saved}
    for override in new:
        key = _key(override)
        if key.startswith("hydra.") or key in RESUMABLE or key.startswith(tuple(p + "." for p in RESUMABLE)) \
                or before.get(key) == override:
            continue
        was = before[key].split("=", 1)[1] if key in before else "its saved value"
        raise ConfigError(f"resuming would change what this run trains ({override}; the run has {was}). A resumed "
                          "run keeps its configuration; only these may change: " + ", ".join(RESUMABLE) + ". Start "
                          "a new run for the other change.")
    return new


def merge_overrides(saved: List[str], new: List[str]) -> List[str]:
    """The saved overrides with each key that ``new`` sets again replaced by the new value."""
    replaced = {_key(o) for o in new}
    return [o for o in saved if _key(o) not in replaced] + list(new)


def resume_argv(argv: List[str]) -> List[str]:
    """Rewrite ``llmft-train resume=DIR [overrides]`` into the stopped run's own command line.

    ``resume=auto`` is left as it is: each run (a requeued Slurm job) continues whatever its own folder holds.

    A run folder (``.hydra/overrides.yaml``) gives back its overrides and its folder; a sweep folder
    (``multirun.yaml``) gives back its sweep, in multirun mode, with the same job numbering. New overrides are
    appended (the run checks that they change nothing that decides the result).

    Raises:
        ConfigError: ``DIR`` is neither.
    """
    given = [a for a in argv if a.lstrip("+").startswith("resume=")]
    if not given or given[-1].split("=", 1)[1] == "auto":  # auto: each run continues its own folder, if any
        return list(argv)
    folder = Path(given[-1].split("=", 1)[1]).expanduser().resolve()
    rest = [a for a in argv if a not in given and a not in ("-m", "--multirun")]
    # hydra.output_subdir=null: the resumed invocation leaves the run's own record in .hydra/ as it was
    if (folder / "multirun.yaml").is_file():
        task = list(OmegaConf.load(folder / "multirun.yaml").hydra.overrides.task)
        return ["-m", *merge_overrides(task, _resumable(rest, task)), f"resume={folder}",
                f"hydra.sweep.dir={folder}", "hydra.output_subdir=null"]
    if (folder / ".hydra" / "overrides.yaml").is_file():
        saved = list(OmegaConf.load(folder / ".hydra" / "overrides.yaml"))
        saved = [o for o in saved if not o.lstrip("+").startswith("resume=")]
        return [*merge_overrides(saved, _resumable(rest, saved)), f"resume={folder}", f"hydra.run.dir={folder}",
                "hydra.output_subdir=null"]
    raise ConfigError(f"resume={folder}: not an llmft run or sweep folder (no .hydra/overrides.yaml or "
                      "multirun.yaml there). Pass the folder that llmft-train printed as its run folder, such as "
                      "outputs/DATE/TIME-ID, or a sweep folder multirun/DATE/TIME-ID with -m.")


def check_writable(argv: List[str]) -> None:
    """Fail in one paragraph, before Hydra creates anything, if a folder the run will write cannot be made.

    Checks the run or sweep folder (``hydra.run.dir``/``hydra.sweep.dir`` when given, else ``outputs``/``multirun``
    under the current folder) and ``paths.cache_dir`` when given, by creating them as the run would.

    Raises:
        WriteError: naming the folder and what to do.
    """
    given = dict(a.lstrip("+").split("=", 1) for a in argv if "=" in a and not a.startswith("~"))
    sweep = "-m" in argv or "--multirun" in argv
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    folders = [given.get(key, "multirun" if sweep else "outputs")]
    if "paths.cache_dir" in given:
        folders.append(given["paths.cache_dir"])
    for folder in folders:
        if "${" in folder or "," in folder:
            continue  # resolved by Hydra, or a sweep over it
        try:
            Path(folder).expanduser().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise explain_write_error(folder, exc) from None
