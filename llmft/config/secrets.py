"""Secrets on the command line: refused before Hydra writes anything, so that none lands in a run folder.

Hydra saves every override in ``.hydra/overrides.yaml`` and the composed config in ``.hydra/config.yaml``; llmft
records the overrides in ``summary.json`` and names and tags the W&B run after them. Rather than redact each of
those, an override that looks secret is refused, with the advice to pass it through the environment, where the
libraries read it (``HF_TOKEN``, ``WANDB_API_KEY``).
"""

import os
import re
from typing import Iterable, Sequence

from llmft.errors import ConfigError

SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
_SECRET_WORDS = {"password", "passwd", "passphrase", "secret", "apikey", "credential", "credentials"}
_SECRET_PAIRS = {("api", "key"), ("private", "key"), ("access", "key"), ("secret", "key"), ("auth", "key")}
# a key ending in "token" is a secret when "token" is all of it or what precedes it says whose (hf_token,
# auth_token); pad_token, eos_token, max_new_tokens, pad_token_id are tokenizer figures, not secrets
_TOKEN_OWNERS = {"hf", "hub", "huggingface", "auth", "access", "api", "bearer", "refresh", "session", "wandb",
                 "github", "gh", "openai", "oauth", "personal", "private", "secret", "id", "client", "user"}
_SECRET_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")  # the shape of a Hugging Face access token
_HARMLESS_VALUES = {"", "null", "none", "true", "false", "???"}  # e.g. token=true: use the stored login


def _words(name: str) -> list:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)  # apiKey -> api_Key
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def is_secret_key(key: str) -> bool:
    """True when a dotted config key is named like a secret (``model.token``, ``data.api_key``, ``db_password``)."""
    for part in key.lstrip("+~").split("."):
        words = _words(part)
        if not words:
            continue
        if set(words) & _SECRET_WORDS or set(zip(words, words[1:])) & _SECRET_PAIRS:
            return True
        if words[-1] == "token" and (len(words) == 1 or words[-2] in _TOKEN_OWNERS):
            return True
    return False


def secret_values() -> set:
    """The values of the secret environment variables that are set (long enough to be told apart)."""
    return {os.environ[k] for k in SECRET_ENV if len(os.environ.get(k, "")) >= 8}


def holds_secret(value: str, secrets: Iterable[str] = None) -> bool:
    """True when ``value`` contains a secret environment variable's value or a Hugging Face token."""
    text = str(value)
    return bool(_SECRET_VALUE.search(text)) or any(s in text for s in (secret_values() if secrets is None
                                                                         else secrets))


def check_secret_overrides(overrides: Sequence[str]) -> None:
    """Refuse an override whose key is named like a secret or whose value holds one.

    Raises:
        ConfigError: one paragraph naming the key (never the value) and the environment variable to use.
    """
    secrets = secret_values()
    for override in overrides:
        key, _, value = override.partition("=")
        named = is_secret_key(key) and value.strip().strip("'\"").lower() not in _HARMLESS_VALUES
        if named or holds_secret(value, secrets):
            why = "is named like a secret" if named else "holds a secret (an access token, or the value of " \
                f"{'/'.join(SECRET_ENV)})"
            raise ConfigError(
                f"the override {key.lstrip('+~')}=... {why}, and llmft does not take secrets on the command line: "
                "Hydra would save it in the run folder's .hydra/overrides.yaml and config.yaml, and llmft in "
                "summary.json, train.log and the W&B run's name and tags. Pass it through the environment "
                "instead, where the libraries read it: export HF_TOKEN=... (Hugging Face) or WANDB_API_KEY=... "
                "(W&B), or log in once with `hf auth login` / `wandb login`. Nothing was written.")


def redact(text: str) -> str:
    """``text`` with each secret value (environment or token-shaped) replaced by ``<redacted>``."""
    for secret in secret_values():
        text = text.replace(secret, "<redacted>")
    return _SECRET_VALUE.sub("<redacted>", text)
