"""Tools on faulty inputs and outputs: a checkpoint with NaN weights, outputs that cannot be written, and
export_weights writing over its own checkpoint under another name; each one line and exit status 2."""
import errno
import os
import tempfile

import numpy as np
import pytest
import torch
import yaml

from helpers import small_training_state, user_error
from sifa.data.storage import write_frame_folder
from sifa.models import get_model_by_name
from sifa.data import synthetic
from sifa.tools import ablation, export, export_weights, plot_log, predict, visualize

NUM_CLASSES = 3
CLIP_LENGTH = 8
CROP = 32


@pytest.fixture(scope="module")
def tool_inputs(tmp_path_factory):
    """A setting of c2d_sifa_resnet50 at 8 frames of 32², a checkpoint of it whose layer1 weights are NaN, and a
    FRAME video."""
    root = tmp_path_factory.mktemp("tool_faults")
    config = root / "net.yml"
    config.write_text(yaml.safe_dump({
        "dataset": {"format": "FRAME", "num_classes": NUM_CLASSES, "crop_size": CROP, "eva_crop_size": CROP},
        "sampler": {"clip_length": CLIP_LENGTH, "eva_num_clips": 1},
        "network": {"net_name": "c2d_sifa_resnet50"}, "logging": {"output_dir": str(root / "out")}}))
    weights = get_model_by_name("c2d_sifa_resnet50", num_classes=NUM_CLASSES, clip_length=CLIP_LENGTH).state_dict()
    weights["layer1.0.conv1.weight"].fill_(float("nan"))
    torch.save({"model": weights}, root / "nan.pth")
    rng = np.random.default_rng(0)
    write_frame_folder(str(root / "video"), [rng.integers(0, 255, (CROP, CROP, 3), dtype=np.uint8)
                                             for _ in range(CLIP_LENGTH)])
    (root / "a_file").write_text("")
    return root


def tool_args(root, checkpoint="nan.pth"):
    return ["--config_file", str(root / "net.yml"), "--checkpoint", str(root / checkpoint), "--input",
            str(root / "video")]


def test_predict_and_visualize_refuse_a_checkpoint_with_nan_weights_alike(tool_inputs, capsys):
    expected = (r"nan\.pth: 1 of the network's tensors hold NaN or infinite values \(the first: "
                r"layer1\.0\.conv1\.weight\)")
    with user_error(capsys, expected):
        predict.main(tool_args(tool_inputs))
    with user_error(capsys, expected):
        visualize.main(tool_args(tool_inputs) + ["--out", str(tool_inputs / "shown")])
    assert not os.listdir(tool_inputs / "shown")  # no PNG or JSON of NaN scores


def read_only_file_system(**kwargs):
    """tempfile.TemporaryFile in a folder of a read-only file system (root writes in any folder otherwise)."""
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def test_tool_outputs_that_cannot_be_written_are_refused_before_the_work(tool_inputs, capsys, monkeypatch):
    # The checkpoint is not even read: the outputs are checked first.
    args = tool_args(tool_inputs, checkpoint="absent.pth")
    under_a_file = tool_inputs / "a_file" / "x"
    with user_error(capsys, rf"--out {under_a_file}\.json: folder {tool_inputs / 'a_file'} is a file"):
        predict.main(args + ["--out", f"{under_a_file}.json"])
    with user_error(capsys, rf"--out {tool_inputs}: is a folder, expected a file name"):
        predict.main(args + ["--out", str(tool_inputs)])
    with user_error(capsys, rf"--out {under_a_file}: cannot write in this folder: Not a directory"):
        visualize.main(args + ["--out", str(under_a_file)])
    with user_error(capsys, rf"--out {under_a_file}\.png: folder .* is a file"):
        plot_log.main(["--output_dir", str(tool_inputs), "--out", f"{under_a_file}.png"])
    export_args = ["--config_file", str(tool_inputs / "net.yml"), "--checkpoint", str(tool_inputs / "absent.pth"),
                   "--format", "pt2", "--out"]
    with user_error(capsys, rf"--out {tool_inputs}: is a folder, expected a file name"):
        export.main(export_args + [str(tool_inputs)])
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only_file_system)
    with user_error(capsys, rf"--out {tool_inputs / 'x.pt2'}: cannot write in folder {tool_inputs}: Read-only file "
                            rf"system"):
        export.main(export_args + [str(tool_inputs / "x.pt2")])
    with user_error(capsys, rf"--out {tool_inputs / 'x.csv'}: cannot write in folder {tool_inputs}: Read-only file "
                            rf"system"):
        predict.main(args + ["--out", str(tool_inputs / "x.csv")])
    with user_error(capsys, rf"--out {tool_inputs / 'shown'}: cannot write in this folder: Read-only file system"):
        visualize.main(args + ["--out", str(tool_inputs / "shown")])


def test_export_weights_does_not_write_over_its_checkpoint_through_a_symlinked_folder(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    checkpoint = small_training_state(tmp_path / "run", 1)
    before = open(checkpoint, "rb").read()
    os.symlink(tmp_path / "run", tmp_path / "link")
    through_link = str(tmp_path / "link" / os.path.basename(checkpoint))
    with user_error(capsys, rf"--out {through_link} is the file --checkpoint {checkpoint} names"):
        export_weights.main(["--checkpoint", checkpoint, "--out", through_link])
    os.link(checkpoint, tmp_path / "hard.pth")
    with user_error(capsys, r"hard\.pth is the file --checkpoint"):
        export_weights.main(["--checkpoint", checkpoint, "--out", str(tmp_path / "hard.pth")])
    assert open(checkpoint, "rb").read() == before
    (tmp_path / "a_file").write_text("")
    with user_error(capsys, r"--out .*a_file/w\.safetensors: folder .*a_file is a file"):
        export_weights.main(["--checkpoint", checkpoint, "--out", str(tmp_path / "a_file" / "w.safetensors")])


def test_ablation_and_the_synthetic_data_set_refuse_an_output_folder_under_a_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "study"
    with user_error(capsys, rf"--out {out}: cannot write in this folder: Not a directory"):
        ablation.main(["--out", str(out), "--recipe", str(tmp_path / "a_file"), "--quick"])
    monkeypatch.setattr("sys.argv", ["synthetic", "--out", str(out)])
    with user_error(capsys, rf"--out {out}: cannot write in this folder: Not a directory"):
        synthetic.main()
