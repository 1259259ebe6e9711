"""The console scripts `pip install .` puts on the PATH (setup.py's entry points), one per tool.

The tools' main() return what they made (paths, predictions) for Python callers, but a console script's
return value becomes its exit status (a string or list: status 1), so each script runs main() and drops the
result. A tool's failure still exits with its message and status 1 (`sifa.errors.exit_on_user_error`).
"""
import importlib


def _run(tool: str) -> None:
    importlib.import_module(f"sifa.tools.{tool}").main()


def train() -> None:
    _run("train")


def predict() -> None:
    _run("predict")


def prepare() -> None:
    _run("prepare")


def export() -> None:
    _run("export")


def export_weights() -> None:
    _run("export_weights")


def visualize() -> None:
    _run("visualize")


def plot_log() -> None:
    _run("plot_log")


def complexity() -> None:
    _run("complexity")
