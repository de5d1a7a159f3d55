"""Attacks through the real entry points: callables a config may not name, poisoned run folders, remote code and
secrets on the command line. Each payload would create a marker file; every test asserts it was never made.

The installed Hydra blocks some targets itself (os.system); torch.load of a pickle it does not, and without the
allow-list the torch.load attacks here (in eval and in Hydra's callbacks) did create their marker."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from llmft.config.location import CONFIG_DIR
from llmft.config.secrets import is_secret_key
from llmft.config.targets import ALLOWED_TARGETS, LOGGING_CALLABLES, ENV_ALLOW, named_callables
from llmft.runs import open_run
from tests.conftest import TINY_NO_EVAL

ROOT = Path(__file__).resolve().parents[1]
GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra")
SHIPPED = [[f"{g}={p.stem}"] for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]
HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper", "hydra/job_logging", "hydra/hydra_logging")
SECRET = "hf_" + "Q7x" * 12  # the shape of a Hugging Face token


def hydra_options():
    """Every option of Hydra's own groups that llmft may use: launchers (ours and the plugins'), sweepers,
    Optuna's samplers, logging."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        options = [[f"{g}={o}"] for g in HYDRA_GROUPS for o in loader.get_group_options(g)]
        samplers = loader.get_group_options("hydra/sweeper/sampler")
    return options + [["hydra/sweeper=optuna", f"hydra/sweeper/sampler={s}"] for s in samplers]


def compose_all(overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_every_shipped_option_names_only_allowed_callables_and_the_list_names_nothing_else():
    named = {}
    for overrides in SHIPPED + hydra_options():
        for key, name in named_callables(compose_all(overrides)):
            named.setdefault(name, f"{' '.join(overrides)}: {key}")
    assert {n: where for n, where in named.items() if n not in ALLOWED_TARGETS | LOGGING_CALLABLES} == {}
    assert ALLOWED_TARGETS | LOGGING_CALLABLES == set(named), "an allowed callable that no option uses"


def test_real_config_keys_are_not_taken_for_secrets():
    keys = set()
    for overrides in SHIPPED:
        keys |= set(_flat_keys(OmegaConf.to_container(compose_all(overrides))))
    keys |= {"eval.prompts.max_new_tokens", "objective.chunk_tokens", "model.pad_token_id", "pad_token",
             "eos_token", "tokenizer", "max_tokens", "keep_checkpoints", "text_key", "tokens_per_s"}
    assert [k for k in keys if is_secret_key(k)] == []
    for key in ("token", "model.hf_token", "data.api_key", "apiKey", "wandb.api_key", "db_password", "client_secret",
                "use_auth_token", "HF_TOKEN", "access_token", "aws_secret_access_key", "private_key"):
        assert is_secret_key(key), key


def _flat_keys(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if f"{prefix}{key}" != "hydra.job.env_set":  # its keys are environment variable names
                yield f"{prefix}{key}"
            yield from _flat_keys(value, f"{prefix}{key}.")


def cli(module, *args, env=None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    full_env.pop(ENV_ALLOW, None)
    result = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                            timeout=300, env=full_env, cwd=cwd or ROOT)
    return result.returncode, result.stdout + result.stderr


def refused(code, output, *words):
    """Exit code 2, one paragraph on stderr (no traceback) naming each of ``words``."""
    error = [line for line in output.splitlines() if "error:" in line]
    assert code == 2 and len(error) == 1 and "Traceback" not in output, output[-2000:]
    for word in words:
        assert word in error[0], (word, error[0])


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


@pytest.fixture
def evil_pickle(tmp_path, marker):
    """A file ``torch.load(weights_only=False)`` would execute: unpickling it creates the marker."""
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    return path


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def evil_model(tmp_path, marker):
    """A model folder that ships its own code (auto_map); importing that code creates the marker."""
    folder = tmp_path / "evil-model"
    folder.mkdir()
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n" \
           "from transformers import PretrainedConfig\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    for name in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        (folder / f"{name}.py").write_text(code)
    (folder / "config.json").write_text('{"model_type": "evil", "architectures": ["EvilModel"], "auto_map": '
                                        '{"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": '
                                        '"modeling_evil.EvilModel"}}')
    (folder / "tokenizer_config.json").write_text('{"auto_map": {"AutoTokenizer": '
                                                  '["tokenization_evil.EvilTokenizer", null]}}')
    return folder


ATTACKS = {
    "torch.load": lambda m, p, e: ["+eval.pwn._target_=torch.load", f"+eval.pwn.f={p}", "+eval.pwn.weights_only=false"],
    "dynamic module": lambda m, p, e: ["+eval.pwn._target_=transformers.dynamic_module_utils."
                                       "get_class_from_dynamic_module", "+eval.pwn.class_reference="
                                       "configuration_evil.EvilConfig", f"+eval.pwn.pretrained_model_name_or_path={e}"],
    "os.system via llmft": lambda m, p, e: ["+eval.pwn._target_=llmft.train.os.system",
                                            f"+eval.pwn._args_=[touch {m}]"],
    "hydra callback": lambda m, p, e: ["+hydra.callbacks.pwn._target_=torch.load", f"+hydra.callbacks.pwn.f={p}",
                                       "+hydra.callbacks.pwn.weights_only=false"],
    "hydra callback os.system": lambda m, p, e: ["+hydra.callbacks.x._target_=os.system"],
    "hydra callback as a dict": lambda m, p, e: [f"+hydra.callbacks.pwn={{_target_: os.system, _args_: [touch {m}]}}"],
    "hydra callback beside an override compose cannot apply": lambda m, p, e: [
        f"+hydra.callbacks.pwn={{_target_: torch.load, f: '{p}', weights_only: false}}", "hydra.no_such_key=1"],
    "hydra launcher": lambda m, p, e: ["hydra.launcher._target_=os.system"],
    "logging handler": lambda m, p, e: ["+hydra.job_logging.handlers.pwn.class=subprocess.Popen",
                                        f"+hydra.job_logging.handlers.pwn.args=touch {m}",
                                        "+hydra.job_logging.handlers.pwn.shell=true"],
    "a sweep value": lambda m, p, e: ["-m", "+eval.pwn._target_=llmft.evaluation.Perplexity,os.system"],
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_llmft_train_refuses_a_callable_off_the_list_before_anything_runs(attack, tmp_path, marker, evil_pickle,
                                                                            evil_model, cache_dir):
    run_dir = tmp_path / "run"
    code, output = cli("llmft.train", *TINY_NO_EVAL, f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
                       f"hydra.sweep.dir={run_dir}", *ATTACKS[attack](marker, evil_pickle, evil_model))
    refused(code, output, "is not allowed", ENV_ALLOW)
    assert not marker.exists() and not run_dir.exists()


def test_the_user_allows_their_own_callable_in_the_environment(make_cfg, monkeypatch):
    from llmft.config.validate import validate
    from llmft.errors import ConfigError

    cfg = make_cfg(["model=tiny", "+eval.mine._target_=llmft.evaluation.perplexity.Perplexity"])
    with pytest.raises(ConfigError, match="eval.mine._target_=llmft.evaluation.perplexity.Perplexity is not allowed"):
        validate(cfg)
    monkeypatch.setenv(ENV_ALLOW, "some.other, llmft.evaluation.perplexity.Perplexity")
    validate(cfg)


def test_remote_code_in_a_model_folder_does_not_run_unless_the_user_says_so(tmp_path, marker, evil_model, cache_dir):
    run_dir = tmp_path / "run"
    code, output = cli("llmft.train", *[o for o in TINY_NO_EVAL if not o.startswith("model=")], "model.arch=null",
                       f"model.name_or_path={evil_model}", f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}")
    assert code == 1 and "ships its own Python code" in output and "model.trust_remote_code=true" in output, output
    assert "Traceback" not in output and "Do you wish to run the custom code" not in output
    assert not marker.exists()


def test_llmft_refuses_hydras_pickle_rerun():
    code, output = cli("llmft.train", "--experimental-rerun", "config.pickle")
    refused(code, output, "unpickles")


@pytest.mark.parametrize("overrides", [["+data.api_key=sk-12345678"], ["+model.token=abcdefgh12345678"],
                                       ["+logger.password=hunter2hunter2"], [f"data.val_path={SECRET}"],
                                       ["-m", "lora.r=4,8", "data.val_path=from-the-env-var"],
                                       ["+hydra.job.env_set.WANDB_API_KEY=0123456789abcdef"]],
                         ids=["api_key", "token", "password", "token-shaped value", "value of HF_TOKEN", "env_set"])
def test_secrets_on_the_command_line_are_refused_before_a_file_is_written(overrides, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    code, output = cli("llmft.train", *TINY_NO_EVAL, f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
                       f"hydra.sweep.dir={run_dir}", "logger=wandb", *overrides, env={"HF_TOKEN": "from-the-env-var"})
    refused(code, output, "secret", "environment", "Nothing was written")
    secret = overrides[-1].split("=", 1)[1]
    assert secret not in output and not run_dir.exists()


# ---- run folders: a finished run, then its saved config poisoned ---------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir):
    """A completed tiny run, saved as llmft-train leaves it."""
    from llmft.pipeline import run

    folder = tmp_path_factory.mktemp("finished")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.cache_dir={cache_dir}", *TINY_NO_EVAL])
    run(cfg, folder, overrides=TINY_NO_EVAL)
    (folder / ".hydra").mkdir()
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(TINY_NO_EVAL), folder / ".hydra" / "overrides.yaml")
    return folder


POISONS = {
    "eval payload": lambda cfg, m, e: OmegaConf.update(cfg, "eval", {"pwn": {
        "_target_": "llmft.train.os.system", "_args_": [f"touch {m}"]}}, force_add=True),
    "trainer payload": lambda cfg, m, e: OmegaConf.update(cfg, "trainer._target_", "os.system"),
    "created by an interpolation": lambda cfg, m, e: OmegaConf.update(cfg, "eval", {
        "pwn": "${oc.create:'{_target_: llmft.train.os.system, _args_: [touch " + str(m) + "]}'}"}, force_add=True),
    "remote code": lambda cfg, m, e: [OmegaConf.update(cfg, "model", {
        "_target_": "llmft.models.load_pretrained", "name_or_path": str(e), "trust_remote_code": True})],
}


@pytest.fixture
def poisoned(finished, tmp_path, request, marker, evil_model):
    folder = tmp_path / "handed-to-you"
    shutil.copytree(finished, folder)
    for saved in (folder / "config.yaml", folder / ".hydra" / "config.yaml"):  # the effective one is read first
        cfg = OmegaConf.load(saved)
        POISONS[request.param](cfg, marker, evil_model)
        OmegaConf.save(cfg, saved)
    return folder


@pytest.mark.parametrize("poisoned", list(POISONS), indirect=True)
@pytest.mark.parametrize("command", [["llmft.reevaluate"], ["llmft.export.cli", "--merge"]], ids=["eval", "export"])
def test_a_poisoned_run_folder_is_refused_by_eval_and_export(finished, poisoned, command, marker):
    before = sorted(p.name for p in poisoned.iterdir())
    code, output = cli(command[0], poisoned, *command[1:])
    refused(code, output, str(poisoned / "config.yaml"))
    assert ("trust_remote_code" in output) or (ENV_ALLOW in output and "run folder" in output)
    assert not marker.exists() and sorted(p.name for p in poisoned.iterdir()) == before
    assert open_run(str(finished)).cfg.trainer._target_ == "llmft.loop.TrainingLoop"  # the clean one opens


def test_poisoned_saved_overrides_are_refused_when_llmft_eval_recomposes_them(finished, tmp_path, marker):
    folder = tmp_path / "handed-to-you"
    shutil.copytree(finished, folder)
    saved = [*TINY_NO_EVAL, "+data_format.pwn._target_=llmft.train.os.system",
             f"+data_format.pwn._args_=[touch {marker}]"]
    OmegaConf.save(OmegaConf.create(saved), folder / ".hydra" / "overrides.yaml")
    code, output = cli("llmft.reevaluate", folder, "eval=perplexity")
    refused(code, output, "data_format.pwn._target_=llmft.train.os.system is not allowed")
    assert not marker.exists()


def test_no_torch_load_without_weights_only_and_no_pickle_in_llmft():
    import re

    for path in (ROOT / "llmft").rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert not re.search(r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load\(", text), path


def test_wandb_names_and_tags_leave_out_secrets_given_through_the_python_api(monkeypatch, tmp_path):
    from llmft.tracking import run_name, shown_overrides

    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123")
    overrides = ["lora.r=8", "+data.api_key=k-123", "data.val_path=/x/0123456789abcdef0123",
                 "eval.prompts.max_new_tokens=4"]
    assert shown_overrides(overrides) == ["lora.r=8", "data.val_path=/x/<redacted>", "eval.prompts.max_new_tokens=4"]
    assert "k-123" not in run_name(overrides, tmp_path) and "0123456789abcdef0123" not in run_name(overrides, tmp_path)
