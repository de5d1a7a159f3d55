"""Where the configuration lives: ``conf/`` beside the package in a checkout (and an editable install), or the copy
that a wheel ships inside the package as ``llmft/conf`` (``setup.py`` puts it there)."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def config_dir(package_dir: Path = PACKAGE_DIR) -> Path:
    """The primary config folder: the wheel's ``llmft/conf`` if the package has one, else the checkout's ``conf/``."""
    shipped = package_dir / "conf"
    return shipped if shipped.is_dir() else package_dir.parent / "conf"


CONFIG_DIR = config_dir()
