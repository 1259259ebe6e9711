"""The console scripts `pip install .` puts on the PATH (setup.py's entry points), one per tool.

The tools' main() return what they made (paths, predictions) for Python callers, but a console script's
return value becomes its exit status (a string or list: status 1), so each script runs main() and drops the
result. A user error still exits with its one-line message and status 2 (`sifa.errors.exit_on_user_error`).
"""
import importlib
from functools import partial


def _run(tool: str) -> None:
    importlib.import_module(f"sifa.tools.{tool}").main()


train = partial(_run, "train")
predict = partial(_run, "predict")
prepare = partial(_run, "prepare")
export = partial(_run, "export")
export_weights = partial(_run, "export_weights")
visualize = partial(_run, "visualize")
plot_log = partial(_run, "plot_log")
complexity = partial(_run, "complexity")
