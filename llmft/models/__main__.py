"""``python -m llmft.models [OPTION ...]``: fetch or convert the weights of model options ahead of a run.

With no argument it prepares the default model (``smollm2-135m``): offline, that converts its GGUF file to the
safetensors cache once, so that the first ``llmft-train`` does not spend half a minute on it.
"""

import logging
import sys

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from llmft.config.location import CONFIG_DIR
from llmft.config.precheck import fail
from llmft.errors import LlmftError
from llmft.quiet import quiet_libraries


def main(argv=None) -> None:
    """Load each named model option once (downloading or converting it) and print where it came from."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_libraries()
    options = (argv if argv is not None else sys.argv[1:]) or ["smollm2-135m"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfgs = {name: compose(config_name="train", overrides=[f"model={name}"]) for name in options}
    for name, cfg in cfgs.items():
        try:
            loaded = instantiate(cfg.model, _partial_=True)(cache_dir=cfg.paths.cache_dir)
        except LlmftError as exc:
            fail(str(exc), code=1)
        print(f"{name}: {loaded.name} ready ({loaded.model.num_parameters():,} parameters) from {loaded.source}")


if __name__ == "__main__":
    main()
