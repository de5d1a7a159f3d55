"""``llmft-chat RUN``: talk to a fine-tuned run (or an export's merged model), and to its base beside it.

It loads the run's base model and adapter with the run's chat template, system prompt and generation settings,
checks that the prompt it builds is the prompt part of the training rendering (:mod:`llmft.export.parity`),
and streams the answers. ``--prompt`` answers once with only the answer on stdout; without it, a multi-turn
conversation on the terminal (``/reset``, ``/exit``). ``--compare`` answers with the base first: the same
model with the adapter disabled, no second load. Ctrl-C stops the current answer, not the session.
"""

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from llmft.config.precheck import fail
from llmft.errors import LlmftError
from llmft.quantization import keep_out_bitsandbytes
from llmft.shutdown import fast_exit

HELP = "Type a message; /reset starts a new conversation, /exit (or Ctrl-D) ends. Ctrl-C stops an answer."


class Chat:
    """A conversation with a model: the history, the generation settings, and streaming with a stop switch."""

    def __init__(self, model, tokenizer, system_prompt: Optional[str], settings: Dict):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.history: List[dict] = []
        self.stopped = threading.Event()

    def reset(self) -> None:
        self.history = []

    def stream(self, text: str, base: bool = False) -> Iterator[str]:
        """Yield the answer to ``text`` as it is generated, stripped as ``llmft.evaluation.generate`` strips it.

        With ``base``, the adapter is disabled for this answer. A turn the fine-tuned model answers to the end
        joins the history; an interrupted one (Ctrl-C) does not.
        """
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        from llmft.evaluation.generation import stop_token_ids

        conversation = self.system + self.history + [{"role": "user", "content": text}]
        rendered = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        inputs = self.tokenizer(rendered, return_tensors="pt", add_special_tokens=False)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(**inputs.to(next(self.model.parameters()).device), streamer=streamer,
                      eos_token_id=stop_token_ids(self.model, self.tokenizer), pad_token_id=self.tokenizer.pad_token_id,
                      stopping_criteria=StoppingCriteriaList([lambda *_, **__: self.stopped.is_set()]),
                      **self.settings)
        self.stopped.clear()
        failure: List[BaseException] = []
        worker = threading.Thread(target=self._generate, args=(kwargs, base, streamer, failure), daemon=True)
        worker.start()
        answer, completed = [], False
        try:
            for piece in _strip(streamer):
                answer.append(piece)
                yield piece
            completed = True
        finally:
            if not completed:
                self.stopped.set()  # Ctrl-C: the generation thread stops at its next token
            worker.join()
        if failure:
            raise failure[0]
        if not base:
            self.history += [conversation[-1], {"role": "assistant", "content": "".join(answer)}]

    def _generate(self, kwargs: dict, base: bool, streamer, failure: list) -> None:
        import torch

        from llmft.evaluation.generation import contiguous_head

        try:
            with torch.inference_mode(), self.model.disable_adapter() if base else contextlib.nullcontext(), \
                    contiguous_head(self.model):
                self.model.generate(**kwargs)
        except BaseException as exc:  # raised again in the main thread, which would otherwise wait forever
            failure.append(exc)
            streamer.end()


def _strip(pieces: Iterator[str]) -> Iterator[str]:
    """The streamed text without leading and trailing whitespace, as ``llmft.evaluation.generate`` returns it."""
    started, pending = False, ""
    for piece in pieces:
        piece = piece if started else piece.lstrip()
        if not piece:
            continue
        started = True
        body = piece.rstrip()
        if body:
            yield pending + body
            pending = piece[len(body):]
        else:
            pending += piece


def load(path: str, alone: bool = False):
    """``(model, tokenizer, run config or None, has adapter)`` from a run folder, an export or a merged folder.

    ``alone``: this process does nothing else (the console script's), so a run that quantizes nothing keeps
    bitsandbytes out of it (``keep_out_bitsandbytes``); not for a caller that may load a quantized run later.
    """
    from llmft.export.loading import load_quietly
    from llmft.runs import RunFolderError, open_run

    folder = Path(path).expanduser()
    merged = next((f for f in (folder / "merged", folder) if (f / "config.json").is_file()), None)
    if merged is None:
        run = open_run(path)
        if alone:
            keep_out_bitsandbytes(run.cfg)
        model, loaded = load_quietly(run)
        return model, loaded.tokenizer, run.cfg, True
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    report = merged.parent / "export_report.json"
    try:  # the export names its run, whose chat settings apply
        cfg = open_run(json.loads(report.read_text())["run"]).cfg if report.is_file() else None
    except RunFolderError:
        cfg = None
    return model, AutoTokenizer.from_pretrained(merged), cfg, False


def open_chat(args: argparse.Namespace, alone: bool = False) -> Chat:
    """Load the model named by ``args.run`` with the run's template and settings, checked for parity (``alone``:
    as ``load``'s)."""
    from llmft.data.templates import use_chat_template
    from llmft.evaluation.generation import stop_token_ids
    from llmft.export.parity import check_parity, sample_conversation

    model, tokenizer, cfg, adapter = load(args.run, alone)
    if args.compare and not adapter:
        raise LlmftError(f"{args.run} is a merged model: there is no adapter to disable for --compare. Pass the "
                         "run folder itself (llmft-chat RUN --compare).")
    node = (cfg.eval.get("prompts") if cfg is not None and cfg.get("eval") else None) or {}
    use_chat_template(tokenizer, cfg.data.fallback_template if cfg is not None else "chatml")
    system = node.get("system_prompt") if args.system is None else (args.system or None)
    check_parity(tokenizer, sample_conversation(system), stop_token_ids(model, tokenizer))
    temperature = args.temperature if args.temperature is not None else \
        (node.get("temperature", 1.0) if node.get("do_sample") else 0.0)
    settings = {"max_new_tokens": args.max_new_tokens or node.get("max_new_tokens", 256), "do_sample": temperature > 0}
    if temperature > 0:
        settings.update(temperature=temperature, top_p=node.get("top_p", 1.0))
    return Chat(model, tokenizer, system, settings)


def busy_seconds() -> Optional[float]:
    """CPU seconds the whole machine has been busy since it started (``/proc/stat``), or None where unknown."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Others:
    """What the other processes on the machine use of its cores, measured from now until ``free_cores``."""

    def __init__(self):
        self.start, self.busy, self.own = time.monotonic(), busy_seconds(), time.process_time()

    def free_cores(self) -> int:
        """The threads to generate with: the cores the other processes left free meanwhile (else the load
        average's), at least 1, at most torch's default.

        A token is a few hundred small operations, each split across the threads; a thread that waits for a busy
        core makes every one of them wait (2 threads on 2 loaded cores: 10x the time of 1). The thread count does not
        change the answer (the logits are bitwise equal with 1 and 2 threads). The load average lags a minute
        behind: on a machine that has just finished a job it still reads 1 and would give a quiet machine's
        generation one thread (12.2 s for ``--prompt`` against 10.0 s with two, measured).
        """
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        elapsed, busy = time.monotonic() - self.start, busy_seconds()
        if busy is None or self.busy is None or elapsed < 0.2:
            used = os.getloadavg()[0]
        else:
            used = max(0.0, (busy - self.busy) - (time.process_time() - self.own)) / elapsed
        return max(1, min(torch.get_num_threads(), round(cores - used)))


def say(chat: Chat, text: str, base: bool, out=sys.stdout) -> None:
    """Stream one answer to ``out``; Ctrl-C stops it and leaves a mark."""
    try:
        for piece in chat.stream(text, base):
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        out.write(" [stopped]")
    out.write("\n")
    out.flush()


def converse(chat: Chat, compare: bool) -> None:
    """The terminal conversation: one line per message, until /exit or the end of input."""
    voices = [("base", True), ("fine-tuned", False)] if compare else [("model", False)]
    sys.stderr.write(HELP + "\n")
    while True:
        sys.stderr.write("you> ")
        sys.stderr.flush()
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:  # at the prompt Ctrl-C clears the line; /exit or Ctrl-D ends the session
            sys.stderr.write("\n")
            continue
        text = line.strip()
        if not line or text == "/exit":
            return
        if text == "/reset":
            chat.reset()
            sys.stderr.write("(a new conversation)\n")
        elif text:
            for label, base in voices:
                sys.stdout.write(f"{label}> ")
                sys.stdout.flush()
                say(chat, text, base)


def main(argv=None) -> None:
    """Console script ``llmft-chat RUN [--prompt TEXT] [--compare] [--system TEXT] [--max-new-tokens N] [--temperature T]
    [--threads N]``."""
    parser = argparse.ArgumentParser(prog="llmft-chat", description="Talk to a fine-tuned llmft run (or an "
                                     "export's merged model) with the run's chat template and settings.")
    parser.add_argument("run", help="a completed run folder, an export folder, or a merged model folder")
    parser.add_argument("--prompt", help="answer this once and exit; stdout holds only the answer")
    parser.add_argument("--compare", action="store_true", help="answer with the base (adapter disabled) first")
    parser.add_argument("--system", help="the system prompt (default: the run's; \"\" for none)")
    parser.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: the run's, or 256)")
    parser.add_argument("--temperature", type=float, help="0 for greedy (default: the run's setting)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the cores other processes leave free now)")
    args = parser.parse_args(argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1 or (args.temperature or 0) < 0 \
            or args.threads is not None and args.threads < 1:
        parser.error("--max-new-tokens and --threads must be at least 1 and --temperature at least 0 (0: greedy)")
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    from llmft.quiet import quiet_libraries
    from llmft.startup import quiet_collector

    # the console script's libraries and model load without garbage collection (a caller's process is left alone)
    with quiet_collector() if argv is None else contextlib.nullcontext():
        quiet_libraries()  # before the libraries load: bitsandbytes' kernel notice, progress bars off a terminal
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        others = Others()
        try:
            chat = open_chat(args, alone=True)
        except LlmftError as exc:
            fail(str(exc), code=2, program="llmft-chat")
    torch.set_num_threads(args.threads or others.free_cores())
    if args.prompt is None:
        converse(chat, args.compare)
    elif args.compare:
        for label, base in (("base", True), ("fine-tuned", False)):
            sys.stdout.write(f"{label}: ")
            say(chat, args.prompt, base)
    else:
        say(chat, args.prompt, False)
    if argv is None:  # the console script: nothing follows (a caller that passed arguments goes on)
        fast_exit(0)


if __name__ == "__main__":
    main()
