"""The documentation agrees with itself and with the shipped files."""
import re

import pytest

from helpers import REPO_ROOT


def test_the_demo_figures_are_given_in_the_readme_only():
    readme = (REPO_ROOT / "README.md").read_text()
    assert re.search(r"\d+ min \d+ s", readme) and "100 %" in readme
    for path in ("docs/training.md", "settings/synthetic_demo.yml"):
        text = (REPO_ROOT / path).read_text()
        assert not re.search(r"\d+ ?(min|minutes)\b|\d+(–\d+)? ?% \(|top-1 (of )?\d+", text), path
        assert "README" in text, path


def test_list_file_example_uses_the_shipped_class_names():
    classes = set((REPO_ROOT / "data_lists/kinetics400_classes.txt").read_text().split())
    training = (REPO_ROOT / "docs/training.md").read_text()
    example = training[training.index("### List files"):training.index("The path is relative")]
    folders = re.findall(r"^    (\S+?)/", example, flags=re.M)
    assert folders and all(folder in classes for folder in folders), folders


@pytest.mark.slow  # thirty training steps
def test_the_layers_example_trains():
    """docs/layers.md's example and read-out, run as written: the loss on its clips falls over its thirty steps,
    and the offsets and scores read out have the documented shapes."""
    text = (REPO_ROOT / "docs/layers.md").read_text()
    section = text[text.index("## An example that trains"):]
    example, readout = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    namespace = {}
    exec(compile(example, "docs/layers.md", "exec"), namespace)
    losses = namespace["losses"]
    assert len(losses) == 30 and sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
    exec(compile(readout, "docs/layers.md", "exec"), namespace)
    x, offset, scores = (namespace[name] for name in ("x", "offset", "scores"))
    N, C, T, h, w = x.shape
    assert (N, T, h, w) == (1, 8, 4, 4) and offset.shape == (1, 18, T, h, w) and scores.shape == (1, 9, T, h, w)
