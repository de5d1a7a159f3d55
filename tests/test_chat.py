"""llmft-chat on a finished tiny run, as a real subprocess: --prompt prints exactly the greedy answer, the terminal
conversation keeps its history until /reset, --compare answers with the adapter disabled, Ctrl-C stops an answer."""

import os
import select
import signal
import subprocess
import sys
import time

import pytest

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
    process = subprocess.Popen([*CHAT, str(tiny_run), "--max-new-tokens", "1900"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        process.stdin.write(b"Tell me everything about pods.\n")
        process.stdin.flush()
        seen = read_until(process, b"model> ", 240)
        seen += os.read(process.stdout.fileno(), 4096)  # the answer is streaming: its first words are out
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends (at once: the tiny model writes 1,900 tokens in ~1 s)
        seen += read_until(process, b"[stopped]\n", 60)
        process.stdin.write(b"/exit\n")
        process.stdin.flush()
        assert process.wait(timeout=60) == 0, process.stderr.read()[-2000:]
    finally:
        process.kill()
    assert seen.count(b"model> ") == 1 and seen.endswith(b" [stopped]\n")


def read_until(process, marker: bytes, timeout: float) -> bytes:
    out, deadline = b"", time.monotonic() + timeout
    while marker not in out:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(process.stdout.fileno(), 4096) if ready else b""
        assert chunk, f"no {marker!r} in time; got {out[-500:]!r}"
        out += chunk
    return out
