"""Helpers shared by the tests that drive the CLI: run it in process, and read its one error line."""

from __future__ import annotations

from click.testing import CliRunner

from raydiff.cli import main


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``raydiff ARGS`` in process → (exit code, output)."""
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


def one_error_line(output: str) -> str:
    """The output's one ``error:`` line (asserting there is exactly one and no traceback)."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("error:", "Error:"))]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]
