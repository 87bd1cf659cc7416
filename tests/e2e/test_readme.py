"""The README's examples, run as a reader would run them, against the stack started from the
shipped configs: the curl commands and the `explain` command of "Try it", the SDK snippet, and the
routing YAML excerpt (every line of it must stand in deploy/routing.yaml, in order). Each example
names the model it reaches ("goes to X", or a `# X ...` comment after a print), and that is checked,
so the README cannot drift from what the code does."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from procs import ROOT, ROUTING_YAML

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The README text from the heading `title` to the next heading of the same or a higher level
    (lines inside fenced code blocks, such as shell comments, are not headings)."""
    lines = README.splitlines(keepends=True)
    start = level = None
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            continue
        heading = None if fenced else re.match(r"(#+) (.*)", line)
        if heading and start is None and heading.group(2).strip() == title:
            start, level = i + 1, len(heading.group(1))
        elif heading and start is not None and len(heading.group(1)) <= level:
            return "".join(lines[start:i])
    assert start is not None, f"README has no section {title!r}"
    return "".join(lines[start:])


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def examples() -> list[tuple[str, str]]:
    """(command, comment) for each example of the "Try it" shell block: a comment line, then the
    command (continued over lines ending in `\\` or `|`)."""
    (block,) = code_blocks(section("Try it"), "sh")
    found = []
    for chunk in block.strip().split("\n\n"):
        lines = chunk.splitlines()
        assert lines[0].startswith("# "), chunk
        found.append(("\n".join(lines[1:]), lines[0][2:]))
    return found


def localized(command: str, stack) -> str:
    """The command pointed at the test stack and the binary the tests built."""
    return command.replace("127.0.0.1:8080", f"127.0.0.1:{stack.ports['listener']}").replace(
        "target/release/responses-router", str(stack.router_bin))


def expected_model(comment: str) -> str | None:
    match = re.search(r"goes to ([\w-]+)", comment)
    return match.group(1) if match else None


@pytest.mark.parametrize(("command", "comment"), examples(), ids=[c for _, c in examples()])
def test_try_it_examples(stack, command, comment):
    out = subprocess.run(["bash", "-o", "pipefail", "-c", localized(command, stack)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
    model = expected_model(comment)
    if "grep -i '^x-router-'" in command:
        assert f"x-router-model: {model}" in out.stdout.lower(), out.stdout
        assert "127.0.0.1" not in out.stdout
    elif "/v1/models" in command:
        ids = [m["id"] for m in json.loads(out.stdout)["data"]]
        assert ids[0] == "auto" and "code-model" in ids and "story-model" in ids, ids
    else:
        assert model, f"the README comment names no model: {comment!r}"
        assert json.loads(out.stdout)["model"] == model, out.stdout
        assert out.stdout.endswith("\n"), "the output ends with a newline"


def test_sdk_snippet_prints_what_its_comments_say(stack):
    (snippet,) = code_blocks(section("Try it"), "python")
    out = subprocess.run([sys.executable, "-c", localized(snippet, stack)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    printed = out.stdout.splitlines()
    listed = eval(printed[0])  # noqa: S307 - the snippet's own printed list of model ids
    expected_list = eval(re.search(r"print\(\[m\.id.*?# (\[.*\])", snippet).group(1))  # noqa: S307
    assert listed == expected_list
    first_model = re.search(r"print\(first\.model.*?# ([\w-]+)", snippet).group(1)
    assert printed[1].split()[0] == first_model, printed[1]
    assert printed[2:] and printed[2] == "response.created" and printed[-1] == "response.completed", printed


def test_routing_yaml_excerpt_stands_in_the_shipped_file():
    (excerpt,) = code_blocks(section("Configuration: the routing YAML"), "yaml")
    shipped = iter(ROUTING_YAML.read_text().splitlines())
    for line in excerpt.splitlines():
        assert any(candidate == line for candidate in shipped), f"not in deploy/routing.yaml (in order): {line!r}"
