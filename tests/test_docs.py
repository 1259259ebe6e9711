"""The documentation agrees with itself and with the shipped files."""
import re

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
