"""llmft-chat on a finished tiny run, as a real subprocess: --prompt prints exactly the greedy answer, the terminal
conversation keeps its history until /reset, --compare answers with the adapter disabled; and (in this process, with
a real SIGINT) Ctrl-C stops an answer, not the session."""

import io
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from llmft.evaluation.generation import generate
from llmft.runs import load_with_adapter, open_run
from tests.test_export import tiny_run  # noqa: F401  (the module-scoped finished tiny run)

SYSTEM = "You are a concise Kubernetes and DevOps assistant."  # the run's eval.prompts.system_prompt
CHAT = [sys.executable, "-m", "llmft.chat"]


@pytest.fixture(scope="module")
def greedy(tiny_run):  # noqa: F811
    """Greedy answers of the run's model (or of its base) to a conversation, as llmft's evaluation gives them."""
    model, loaded = load_with_adapter(open_run(str(tiny_run)))

    def answer(*turns, base=False, tokens=16):
        messages = [{"role": "system", "content": SYSTEM}]
        messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        if base:
            with model.disable_adapter():
                return generate(model, loaded.tokenizer, [messages], max_new_tokens=tokens)[0]
        return generate(model, loaded.tokenizer, [messages], max_new_tokens=tokens)[0]

    return answer


def chat(run, *args, stdin=None):
    result = subprocess.run([*CHAT, str(run), "--max-new-tokens", "16", *args], input=stdin, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return result


def test_prompt_prints_exactly_the_greedy_answer_and_nothing_else(tiny_run, greedy):  # noqa: F811
    result = chat(tiny_run, "--prompt", "How do I list pods?")
    assert result.stdout == greedy("How do I list pods?") + "\n"


def test_compare_answers_with_the_adapter_disabled_then_enabled(tiny_run, greedy):  # noqa: F811
    result = chat(tiny_run, "--prompt", "What is a Deployment?", "--compare")
    base, tuned = greedy("What is a Deployment?", base=True), greedy("What is a Deployment?")
    assert base != tuned and result.stdout == f"base: {base}\nfine-tuned: {tuned}\n"


def test_the_conversation_keeps_its_history_until_reset(tiny_run, greedy):  # noqa: F811
    result = chat(tiny_run, stdin="What is a pod?\nAnd a node?\n/reset\nAnd a node?\n/exit\nnever read\n")
    first = greedy("What is a pod?")
    assert result.stdout.splitlines() == [f"model> {first}", f"model> {greedy('What is a pod?', first, 'And a node?')}",
                                          f"model> {greedy('And a node?')}"]
    assert "/reset starts a new conversation" in result.stderr and "(a new conversation)" in result.stderr


def test_ctrl_c_stops_the_answer_not_the_session(tiny_run):  # noqa: F811
    """A real SIGINT to this process while an answer streams: the answer stops with a mark, the generation thread
    ends, the turn stays out of the history, and the next message is answered (min_new_tokens keeps the answer from
    ending on its own before the signal, whatever the trained weights of this machine make the model say)."""
    import argparse

    from llmft.chat import open_chat, say

    chat = open_chat(argparse.Namespace(run=str(tiny_run), compare=False, system=None, max_new_tokens=1900,
                                        temperature=None))
    chat.settings["min_new_tokens"] = 1900

    class CtrlCOnFirstWords(list):
        def write(self, text):
            self.append(text)
            if len(self) == 1:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends, while the answer streams

        def flush(self):
            pass

    out = CtrlCOnFirstWords()
    started = time.monotonic()
    # Python's own SIGINT handler, as llmft-chat's process starts with (an earlier test may have left another)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        say(chat, "Tell me everything about pods.", base=False, out=out)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert out[-2:] == [" [stopped]", "\n"] and len(out) < 100 and time.monotonic() - started < 60
    assert chat.history == [] and not any(t.name.endswith("(_generate)") for t in threading.enumerate())  # it ended
    chat.settings.update(max_new_tokens=4, min_new_tokens=4)
    say(chat, "And a node?", base=False, out=io.StringIO())  # the session goes on: this answer ends and is remembered
    assert [m["role"] for m in chat.history] == ["user", "assistant"]


# What chatting needs is torch, transformers, peft and the run's config; these are the training, evaluation and
# export stacks (and bitsandbytes, which compiles its kernels as it loads, for a run that quantizes nothing). Each
# cost llmft-chat seconds of start-up before it was kept out (README, Chat: the figures).
NOT_FOR_CHATTING = ("datasets", "evaluate", "pandas", "pyarrow", "gguf", "bitsandbytes", "llmft.objectives",
                    "llmft.evaluation.metrics", "llmft.export.exporter", "transformers.modeling_gguf_pytorch_utils")


def test_chatting_imports_none_of_the_training_evaluation_or_export_stacks(tiny_run):  # noqa: F811
    script = ("import sys\nfrom llmft.chat import main\n"
              f"main([{str(tiny_run)!r}, '--prompt', 'How do I list pods?', '--max-new-tokens', '2'])\n"
              f"print([m for m in {NOT_FOR_CHATTING!r} if sys.modules.get(m) is not None])")  # None: kept out
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "[]", result.stdout


def test_threads_leave_the_cores_that_other_processes_use_now():
    from llmft.chat import Others

    cores = min(torch.get_num_threads(), len(os.sched_getaffinity(0)))
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)
        others = Others()
        time.sleep(1.0)
        assert 1 <= others.free_cores() <= max(1, cores - 1)  # the load average has hardly moved in 1.5 s
    finally:
        spinner.kill()
        spinner.wait()


def test_threads_follow_the_option(tiny_run, greedy):  # noqa: F811
    result = chat(tiny_run, "--prompt", "How do I list pods?", "--threads", "1")
    assert result.stdout == greedy("How do I list pods?") + "\n"
    refused = subprocess.run([*CHAT, str(tiny_run), "--threads", "0"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--threads must be at least 1" in refused.stderr


def test_an_adapter_only_export_is_refused_naming_the_run_and_the_merge(tmp_path):
    from llmft.chat import load
    from llmft.errors import LlmftError

    export = tmp_path / "run" / "export"
    (export / "adapter").mkdir(parents=True)
    (export / "adapter" / "adapter_config.json").write_text("{}")
    (export.parent / ".hydra").mkdir()
    (export.parent / ".hydra" / "config.yaml").write_text("{}")
    with pytest.raises(LlmftError, match="holds only the adapter") as caught:
        load(str(export))
    assert f"pass the run folder itself ({export.parent})" in str(caught.value) and "--merge" in str(caught.value)
