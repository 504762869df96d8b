"""User-facing errors: each renders as one clear line (or one line per problem), never a traceback."""

from __future__ import annotations


class SftlabError(Exception):
    """An error caused by the user's input or environment, shown without a traceback."""


class SpecError(SftlabError):
    """Every problem found in a spec file, reported together."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        lines = [f"{source}: {len(problems)} {noun}:"] + [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))
