"""Ship ``conf/`` inside the wheel as ``llmft/conf``: the project keeps it at the top level (the design names it),
and an installed package has nothing beside it (``llmft.config.location`` finds either)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfig(build_py):
    """``build_py`` that also copies ``conf/`` into the built package (not for an editable install, which reads the
    checkout's own ``conf/``)."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            self.copy_tree(str(Path(__file__).parent / "conf"), str(Path(self.build_lib) / "llmft" / "conf"))


setup(cmdclass={"build_py": BuildWithConfig})
