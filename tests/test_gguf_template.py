"""The Modelfile's TEMPLATE renders, as Go's text/template renders it for Ollama, the prompt the chat template
renders: for the real Qwen2 tokenizer (ChatML with a system prompt inserted when there is none, as SmolLM2's),
the tiny model's plain ChatML, and a template that cannot be restated (no TEMPLATE then).

Go templates are rendered twice: by ``render_go`` below, which follows text/template's rules for what our
templates use (trim markers, ``range $i, $m := .Messages``, ``if``, ``and``/``eq``/``ne``, fields) and raises on
anything else; and by Go's own text/template where a ``go`` toolchain is installed.
"""

import json
import os
import re
import shutil
import subprocess

import pytest
from transformers import AutoTokenizer

from llmft.export.modelfile import CHECKED, chat_template_pieces, modelfile
from tests.conftest import realdata

ACTION = re.compile(r"\{\{(- )?\s*(.*?)\s*( -)?\}\}", re.S)
WORD = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+)')
CONVERSATIONS = [*CHECKED, [{"role": "user", "content": "Bonjour {{ .Role }} \"quoted\"\n\n"},
                            {"role": "assistant", "content": ""}, {"role": "user", "content": "  spaces  "}]]


def render_go(template: str, messages: list) -> str:
    """Render ``template`` with Ollama's ``.Messages`` as Go's text/template would."""
    pieces, at = [], 0
    for match in ACTION.finditer(template):
        text = template[at:match.start()]
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        if pieces and pieces[-1][0] == "trim":  # the previous action ended with " -}}"
            pieces.pop()
            text = text.lstrip(" \t\r\n")
        pieces.append(("text", text))
        pieces.append(("action", match.group(2)))
        if match.group(3):
            pieces.append(("trim", ""))
        at = match.end()
    tail = template[at:]
    if pieces and pieces[-1][0] == "trim":
        pieces.pop()
        tail = tail.lstrip(" \t\r\n")
    pieces.append(("text", tail))
    body, rest = _block(pieces)
    assert not rest, "an {{ end }} without its opening action"
    return _run(body, {"Messages": messages}, {})


def _block(pieces):
    """``(nodes, remaining pieces)`` up to an unmatched ``end``."""
    nodes = []
    while pieces:
        (kind, value), pieces = pieces[0], pieces[1:]
        if kind == "text":
            nodes.append(("text", value))
        elif value == "end":
            return nodes, [("end", "")] + pieces
        elif value.startswith(("range ", "if ")):
            inner, pieces = _block(pieces)
            assert pieces and pieces[0][0] == "end", f"{{{{ {value} }}}} has no {{{{ end }}}}"
            nodes.append((value.split(" ", 1)[0], value.split(" ", 1)[1], inner))
            pieces = pieces[1:]
        else:
            nodes.append(("print", value))
    return nodes, pieces


def _run(nodes, dot, variables) -> str:
    out = ""
    for node in nodes:
        if node[0] == "text":
            out += node[1]
        elif node[0] == "print":
            out += str(_value(node[1], dot, variables))
        elif node[0] == "if":
            out += _run(node[2], dot, variables) if _truth(_value(node[1], dot, variables)) else ""
        else:  # range $i, $m := pipeline
            match = re.fullmatch(r"\$(\w+), \$(\w+) := (.+)", node[1])
            assert match, f"range form not handled: {node[1]}"
            for i, item in enumerate(_value(match.group(3), dot, variables)):
                out += _run(node[2], item, {**variables, match.group(1): i, match.group(2): item})
    return out


def _value(expression: str, dot, variables):
    words = WORD.findall(expression)
    value, rest = _command(words, dot, variables)
    assert not rest, f"not handled: {expression}"
    return value


def _command(words, dot, variables):
    """One command: a function and its arguments, or a single operand."""
    functions = {"and": lambda *a: next((x for x in a if not _truth(x)), a[-1]),
                 "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not _truth(a)}
    if words[0] in functions:
        function, args, words = functions[words[0]], [], words[1:]
        while words and words[0] != ")":
            arg, words = _operand(words, dot, variables)
            args.append(arg)
        return function(*args), words
    return _operand(words, dot, variables)


def _operand(words, dot, variables):
    word, words = words[0], words[1:]
    if word == "(":
        value, words = _command(words, dot, variables)
        assert words[0] == ")"
        return value, words[1:]
    if word.startswith('"'):
        return json.loads(word), words
    if word.isdigit():
        return int(word), words
    if word.startswith("$"):
        name, *fields = word[1:].split(".")
        value = variables[name]
    else:
        assert word.startswith("."), f"operand not handled: {word}"
        value, fields = dot, word[1:].split(".")
    for field in fields:
        value = value[field.lower()] if isinstance(value, dict) and field.lower() in value else value[field]
    return value, words


def _truth(value) -> bool:
    return bool(value)


GO_PROGRAM = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	var in struct {
		Template      string      `json:"template"`
		Conversations [][]Message `json:"conversations"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("").Parse(in.Template))
	var out []string
	for _, messages := range in.Conversations {
		var b strings.Builder
		if err := t.Execute(&b, map[string]any{"Messages": messages, "System": ""}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def render_with_go(tmp_path, template: str, conversations: list) -> list:
    """Go's own text/template, as Ollama runs it (skipped where no go toolchain is installed)."""
    if shutil.which("go") is None:
        pytest.skip("no go toolchain here: render_go above is the check")
    (tmp_path / "main.go").write_text(GO_PROGRAM)
    binary = tmp_path / "render"
    subprocess.run(["go", "build", "-o", str(binary), "main.go"], check=True, cwd=tmp_path,
                   env={**os.environ, "GOCACHE": str(tmp_path / "cache"), "GO111MODULE": "off"})
    answer = subprocess.run([str(binary)], input=json.dumps({"template": template, "conversations": conversations}),
                            capture_output=True, text=True, check=True)
    return json.loads(answer.stdout)


def tokenizers():
    qwen2 = AutoTokenizer.from_pretrained(realdata("tokenizers", "qwen2-instruct"))
    chatml = AutoTokenizer.from_pretrained(realdata("tokenizers", "qwen2-instruct"))
    chatml.chat_template = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
                            "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
                            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    return {"qwen2 (system inserted)": qwen2, "plain chatml": chatml}


@pytest.mark.parametrize("name", ["qwen2 (system inserted)", "plain chatml"])
def test_the_go_template_renders_what_the_chat_template_renders(name, tmp_path):
    tokenizer = tokenizers()[name]
    template = chat_template_pieces(tokenizer)
    assert template is not None and template.style == "chatml"
    assert template.default_system == ("You are a helpful assistant." if name.startswith("qwen2") else None)
    go = template.go()
    expected = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS]
    assert [render_go(go, c) for c in CONVERSATIONS] == expected
    text = modelfile(["<|im_end|>"], None, template, {"temperature": 0})
    assert text.count('TEMPLATE """') == 1 and go in text
    assert render_with_go(tmp_path, go, CONVERSATIONS) == expected


def test_render_go_follows_trim_markers_and_fails_on_what_it_does_not_know():
    messages = [{"role": "user", "content": "x"}]
    assert render_go("a \n {{- range $i, $m := .Messages }} [{{ $i }}:{{ .Role }}] {{- end }}  b", messages) == \
        "a [0:user]  b"
    assert render_go('{{ if and (eq 1 1) (ne "a" "a") }}no{{ end }}{{ if not "" }}yes{{ end }}', []) == "yes"
    with pytest.raises((AssertionError, KeyError)):
        render_go("{{ range .Messages }}{{ end }}", messages)  # a form our templates do not use


def test_a_template_whose_pieces_do_not_render_it_gets_no_template():
    tokenizer = tokenizers()["plain chatml"]
    plain = tokenizer.chat_template
    tokenizer.chat_template = plain.replace("message['content']", "message['content'] | trim")
    assert chat_template_pieces(tokenizer) is not None  # the conversations checked have nothing to trim...
    assert chat_template_pieces(tokenizer, CONVERSATIONS[-1]) is None  # ...the run's has: Ollama uses the GGUF's
    tokenizer.chat_template = plain.replace("<|im_end|>\\n", "<|im_end|>")
    assert chat_template_pieces(tokenizer) is None
