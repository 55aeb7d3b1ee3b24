"""The tools a model may call: each a name, a one-line description and a function from text to text.

A tool call arrives as {"name": "calculator", "arguments": "12*7"} (nanolm.text.chat parses it out of the
model's turn). `Toolbox.call` looks the name up, runs the tool on the arguments and returns what the model
will read in the tool's turn: the result, or a line starting "error:" that says what went wrong (an unknown
tool, a refused expression, a program that crashed). A tool never raises into the generation loop, and its
output is cut at MAX_OUTPUT characters so a chatty program cannot flood the model's context.

    calculator  nanolm.core.calculator: arithmetic by walking the AST, never eval
    python      a program run in nanolm.use.sandbox (a separate process fenced in by the OS); what it prints
    search      the best passages of a nanolm.use.rag index for a query, as "[title] text"

`describe` writes the tools as a system prompt, so a model that was never trained on a tool can be told
about it (notebook 14 tries that).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..core.calculator import calculate, format_number

MAX_OUTPUT = 400  # characters of a tool's output the model gets to read


@dataclass(frozen=True)
class Tool:
    name: str
    description: str  # one line, for a system prompt: what it does and what its argument is
    run: Callable[[str], str]


@dataclass(frozen=True)
class Call:
    """One executed tool call: what was asked, what came back, whether it worked, how long it took."""

    name: str
    arguments: str
    output: str
    ok: bool
    seconds: float


class Toolbox:
    """Tools by name; `call` runs one and never raises."""

    def __init__(self, tools: Sequence[Tool]):
        self.tools = {t.name: t for t in tools}
        if len(self.tools) != len(tools):
            raise ValueError(f"two tools share a name: {[t.name for t in tools]}")

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def call(self, name: str, arguments: str) -> Call:
        start = time.perf_counter()
        tool = self.tools.get(name)
        if tool is None:
            output, ok = f"error: there is no tool named {name!r} (tools: {', '.join(self.tools)})", False
        else:
            try:
                output, ok = tool.run(arguments), True
            except ValueError as e:  # a tool says "bad input" with ValueError; anything else is a bug
                output, ok = f"error: {e}", False
        if len(output) > MAX_OUTPUT:
            output = output[: MAX_OUTPUT - 3] + "..."
        return Call(name, arguments, output, ok and not output.startswith("error:"), time.perf_counter() - start)

    def describe(self) -> str:
        """A system prompt that lists the tools and how to call them."""
        lines = [f"- {t.name}: {t.description}" for t in self.tools.values()]
        return "You can call these tools:\n" + "\n".join(lines)


def calculator() -> Tool:
    return Tool("calculator", "evaluates an arithmetic expression such as (48+24)/2; its argument is the expression",
                lambda expression: format_number(calculate(expression)))


def python(**limits) -> Tool:
    """The Python tool: the argument is a program; the result is what it prints (see nanolm.use.sandbox)."""
    from . import sandbox  # imported here: a calculator-only toolbox needs no sandbox

    return Tool("python", "runs a short Python program in a sandbox; its argument is the program, the result "
                          "is what it prints", lambda code: sandbox.python_tool(code, **limits))


def search(index, k: int = 1, method: str = "hybrid") -> Tool:
    """The search tool over a nanolm.use.rag.RagIndex: the argument is a query, the result the top-k passages."""
    def run(query: str) -> str:
        return "\n".join(f"[{p.title}] {p.text}" for p, _ in index.search(query, k=k, method=method))

    return Tool("search", "searches the course's documents; its argument is a query, the result the best passage",
                run)
