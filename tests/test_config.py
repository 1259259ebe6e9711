"""Configuration: three-layer merge, flat namespace, overrides and their errors."""
import errno
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import yaml

from helpers import REPO_ROOT
from sifa.config import (DEFAULT_CONFIG, IGNORED_KEYS, check_run_inputs, load_config, parse_override,
                         save_config_json)
from sifa.errors import ConfigError
from sifa.models import check_model_config

ORIGINAL_KEYS = """time_dim crop_size eva_crop_size eva_num_crop num_workers no_horizontal_flip rand_augment ra_n ra_m
use_flow dataset_class format list_file root_path num_classes eva_list_file eva_root_path val_video_num
warmup_multiplier lr_scheduler lr_decay_rate lr_decay_epochs weight_decay momentum nesterov clip_gradient
loss_weight num_gpu label_smooth eva_inter eva_inter_freq base_learning_rate warmup_epoch epochs num_clips
num_segments clip_length num_steps eva_num_segments eva_num_clips batch_size iter_size pooling_name frozen_bn
transfer_weights remove_fc remove_defcor_weight pretrained_model eva_model dropout_ratio net_name resume reverse
print_freq save_freq output_dir sifa_kernel""".split()


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_declares_every_original_key_but_the_ignored_ones_and_the_new_ones():
    cfg = vars(load_config(DEFAULT_CONFIG))
    missing = [k for k in ORIGINAL_KEYS + ["class_name_file", "loop_pad"] if k not in cfg and k not in IGNORED_KEYS]
    assert missing == [] and not set(IGNORED_KEYS) & set(cfg)


def test_ignored_original_keys_load_with_a_warning(tmp_path):
    exp = write(tmp_path / "exp.yml", {"dataset": {"val_video_num": 19881}, "optimizer": {"num_gpu": 8}})
    with pytest.warns(UserWarning) as caught:
        cfg = load_config(exp)
    messages = [str(w.message) for w in caught]
    assert any("'val_video_num' is ignored" in m and str(exp) in m for m in messages)
    assert any("'num_gpu' is ignored" in m for m in messages)
    assert not hasattr(cfg, "val_video_num") and not hasattr(cfg, "num_gpu")


def test_the_originals_network_section_holds_resume_and_eva_model(tmp_path):
    exp = write(tmp_path / "exp.yml", {"network": {"net_name": "c2d_sifa_resnet50", "resume": True,
                                                   "eva_model": "output/ckpt_epoch_64.pth"}})
    cfg = load_config(exp)
    assert (cfg.resume, cfg.eva_model) == (True, "output/ckpt_epoch_64.pth")


def test_three_layers_merge_later_wins(tmp_path):
    base = write(tmp_path / "base.yml", {"dataset": {"crop_size": 112, "num_classes": 174},
                                         "optimizer": {"epochs": 50}})
    exp = write(tmp_path / "exp.yml", {"base": str(base), "optimizer": {"epochs": 7},
                                       "sampler": {"batch_size": 3}})
    cfg = load_config(exp)
    assert (cfg.crop_size, cfg.num_classes, cfg.epochs, cfg.batch_size) == (112, 174, 7, 3)
    assert cfg.clip_length == 16  # untouched default


def test_sections_only_group_keys(tmp_path):
    # A key filed under another section (or none) still sets the same flat option.
    exp = write(tmp_path / "exp.yml", {"logging": {"crop_size": 96}, "epochs": 3})
    cfg = load_config(exp)
    assert cfg.crop_size == 96 and cfg.epochs == 3


def test_base_resolved_relative_to_repo_root(tmp_path):
    exp = write(tmp_path / "exp.yml", {"base": "base_config/ssv1_base.yml"})
    assert load_config(exp).num_classes == 174


def test_unknown_key_names_key_file_and_closest_key(tmp_path):
    exp = write(tmp_path / "exp.yml", {"optimizer": {"base_learning_rat": 0.1}})
    with pytest.raises(ConfigError) as err:
        load_config(exp)
    message = str(err.value)
    assert "'base_learning_rat'" in message and str(exp) in message and "'base_learning_rate'" in message


def test_unknown_key_in_base_file_names_the_base_file(tmp_path):
    base = write(tmp_path / "base.yml", {"sampler": {"clip_lenght": 8}})
    exp = write(tmp_path / "exp.yml", {"base": str(base)})
    with pytest.raises(ConfigError, match=r"base\.yml.*'clip_lenght'.*'clip_length'"):
        load_config(exp)


@pytest.mark.parametrize("key, value", [("epochs", "ten"), ("epochs", True), ("nesterov", 1),
                                        ("lr_decay_epochs", [1.5, 2]), ("crop_size", 1.5), ("resume", 3)])
def test_wrong_type_names_key_and_file(tmp_path, key, value):
    exp = write(tmp_path / "exp.yml", {key: value})
    with pytest.raises(ConfigError) as err:
        load_config(exp)
    assert f"'{key}'" in str(err.value) and str(exp) in str(err.value) and "type" in str(err.value)


def test_int_is_accepted_for_float_and_resume_takes_bool_or_path(tmp_path):
    exp = write(tmp_path / "exp.yml", {"base_learning_rate": 1, "resume": "out/current.pth", "sifa_kernel": None})
    cfg = load_config(exp)
    assert cfg.base_learning_rate == 1.0 and isinstance(cfg.base_learning_rate, float)
    assert cfg.resume == "out/current.pth" and cfg.sifa_kernel is None


@pytest.mark.parametrize("key, value, fragment", [("format", "HDF5", "one of"), ("eva_num_crop", 2, "one of"),
                                                  ("batch_size", 0, "positive"), ("use_flow", True, "RGB"),
                                                  ("ra_m", 31, "[0, 30]")])
def test_invalid_values_are_rejected(tmp_path, key, value, fragment):
    exp = write(tmp_path / "exp.yml", {key: value})
    with pytest.raises(ConfigError) as err:
        load_config(exp)
    assert f"'{key}'" in str(err.value) and fragment in str(err.value)


@pytest.mark.parametrize("key, value, fragment", [
    ("base_learning_rate", float("nan"), "finite"), ("base_learning_rate", 0.0, "positive"),
    ("base_learning_rate", -0.1, "positive"), ("loss_weight", float("nan"), "finite"),
    ("clip_gradient", float("nan"), "finite"), ("clip_gradient", float("inf"), "finite"),
    ("momentum", 1.0, "[0, 1)"), ("momentum", -0.5, "[0, 1)"), ("weight_decay", -1e-4, "negative"),
    ("lr_decay_rate", -0.1, "positive"), ("output_dir", "", "empty"), ("output_dir", "  ", "empty"),
    ("crop_size", 16, "at least 32"), ("eva_crop_size", 31, "at least 32")])
def test_non_finite_and_out_of_range_numbers_are_rejected(tmp_path, key, value, fragment):
    exp = write(tmp_path / "exp.yml", {key: value})
    with pytest.raises(ConfigError) as err:
        check_model_config(load_config(exp))  # the crop sizes: what the network takes
    assert f"'{key}'" in str(err.value) and fragment in str(err.value) and str(exp) in str(err.value)


def test_swin_takes_224_pixel_frames_only(tmp_path):
    exp = write(tmp_path / "exp.yml", {"net_name": "c2d_sifa_swin_vit_s_p4_w7", "crop_size": 112})
    with pytest.raises(ConfigError, match="'crop_size' must be 224 for c2d_sifa_swin_vit_s_p4_w7"):
        check_model_config(load_config(exp))
    check_model_config(load_config(exp, ["crop_size=224"]))


def test_key_repeated_inside_one_section_is_rejected(tmp_path):
    exp = tmp_path / "exp.yml"
    exp.write_text("dataset:\n  crop_size: 112\n  num_workers: 2\n  crop_size: 160\n")
    with pytest.raises(ConfigError) as err:
        load_config(exp)
    assert str(exp) in str(err.value) and "key 'crop_size' appears twice (lines 2 and 4)" in str(err.value)


def test_key_set_twice_in_one_file(tmp_path):
    exp = write(tmp_path / "exp.yml", {"dataset": {"crop_size": 1}, "sampler": {"crop_size": 2}})
    with pytest.raises(ConfigError, match="'crop_size' is set more than once"):
        load_config(exp)


def test_missing_files_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yml")
    with pytest.raises(ConfigError, match="base file 'nowhere.yml' not found"):
        load_config(write(tmp_path / "exp.yml", {"base": "nowhere.yml"}))
    bad = tmp_path / "bad.yml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_overrides_parsed_as_yaml_and_validated(tmp_path):
    exp = write(tmp_path / "exp.yml", {"epochs": 3})
    cfg = load_config(exp, ["epochs=9", "sifa_kernel=[1, 5, 5, 5]", "nesterov=true", "output_dir=a b",
                            "base_learning_rate=0.5"])
    assert (cfg.epochs, cfg.sifa_kernel, cfg.nesterov, cfg.output_dir) == (9, [1, 5, 5, 5], True, "a b")
    assert parse_override("resume=") == ("resume", "")
    with pytest.raises(ConfigError, match=r"--opts: unknown key 'epoch'; did you mean 'epochs'"):
        load_config(exp, ["epoch=2"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(exp, ["epochs"])
    with pytest.raises(ConfigError, match=r"--opts: key 'epochs' must be of type int"):
        load_config(exp, ["epochs=1.5"])


def test_merged_config_round_trips_through_json(tmp_path):
    cfg = load_config(write(tmp_path / "exp.yml", {"epochs": 3}))
    save_config_json(cfg, tmp_path / "config.json")
    import json
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["epochs"] == 3 and data["sifa_kernel"] is None  # null: the network's own kernel sizes


SHIPPED = sorted((REPO_ROOT / "settings").glob("*.yml"))


@pytest.mark.parametrize("setting", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_settings_load_without_warnings(setting):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(setting)


def test_shipped_settings_match_the_spec():
    for name, batch in [("c2d_sifa_res50-1x16x1.k400.yml", 24), ("c2d_sifa_res50-1x32x1.k400.yml", 12)]:
        cfg = load_config(REPO_ROOT / "settings" / name)
        assert (cfg.base_learning_rate, cfg.epochs, cfg.batch_size, cfg.iter_size, cfg.loss_weight,
                cfg.lr_scheduler, cfg.warmup_epoch, cfg.num_classes) == (0.04, 64, batch, 4, 4.0, "cosine", 1, 400)
    swin = load_config(REPO_ROOT / "settings" / "c2d_sifa_swin-b-1x64x2.k400.yml")
    assert (swin.clip_length, swin.num_steps, swin.crop_size) == (64, 2, 224)
    ssv1 = load_config(REPO_ROOT / "sifa" / "base_config" / "ssv1_base.yml")
    assert (ssv1.num_classes, ssv1.base_learning_rate, ssv1.epochs, ssv1.warmup_epoch, ssv1.rand_augment,
            ssv1.ra_n, ssv1.ra_m, ssv1.no_horizontal_flip) == (174, 0.02, 64, 5, True, 2, 27, True)


def test_scientific_notation_loads_as_float_in_files_and_overrides(tmp_path):
    # YAML 1.1 (PyYAML's safe loader) reads these as strings; a user writes them as floats.
    exp = tmp_path / "exp.yml"
    exp.write_text("optimizer:\n  base_learning_rate: 5e-3\n  weight_decay: 1E-6\n  momentum: 9.e-1\n")
    cfg = load_config(exp)
    assert (cfg.base_learning_rate, cfg.weight_decay, cfg.momentum) == (0.005, 1e-6, 0.9)
    cfg = load_config(exp, ["base_learning_rate=1e-3", "weight_decay=+5e-4"])
    assert (cfg.base_learning_rate, cfg.weight_decay) == (0.001, 0.0005)
    assert parse_override("output_dir=1e-3x") == ("output_dir", "1e-3x")


def test_loading_a_setting_imports_neither_the_networks_nor_the_operator():
    # sifa.config knows YAML types and its own keys; the networks' checks are sifa.models' (timm, the extension)
    code = ("import sys; from sifa.config import load_config; "
            "load_config('settings/c2d_sifa_swin-b-1x64x2.k400.yml', ['net_name=c2d_sifa_resnet50']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'timm' or m in ('sifa._C', 'sifa.ops', "
            "'sifa.models', 'torch')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def alias_bomb(levels):
    """A YAML list whose level i repeats level i - 1 nine times through an alias: 9**levels values, a few lines."""
    anchors = ["&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]"
                                                    for i in range(1, levels)]
    return "[" + ", ".join(anchors) + "]"


def test_a_yaml_alias_bomb_is_refused_at_once_and_a_message_shows_a_bounded_value(tmp_path):
    small = tmp_path / "small.yml"
    small.write_text(f"sampler:\n  clip_length: {alias_bomb(4)}\n")  # 8000 values: within the bound
    with pytest.raises(ConfigError, match=r"small\.yml: key 'clip_length' must be of type int, got list") as err:
        load_config(small)
    assert len(str(err.value)) < 300
    big = tmp_path / "big.yml"
    big.write_text(f"sampler:\n  clip_length: {alias_bomb(7)}\n")  # 5.3 million values
    with pytest.raises(ConfigError, match=r"big\.yml: invalid YAML: the document expands to more than 10000 values"):
        load_config(big)
    with pytest.raises(ConfigError, match=r"--opts: cannot read the value of 'sifa_kernel': the document expands"):
        load_config(write(tmp_path / "exp.yml", {}), [f"sifa_kernel={alias_bomb(7)}"])


def test_yaml_merge_key_merges_and_the_keys_written_beside_it_win(tmp_path):
    exp = tmp_path / "exp.yml"
    exp.write_text("sampler:\n  <<: {batch_size: 4, clip_length: 8}\n  batch_size: 3\n")
    cfg = load_config(exp)
    assert (cfg.batch_size, cfg.clip_length) == (3, 8)


def test_an_empty_section_sets_nothing(tmp_path):
    exp = tmp_path / "exp.yml"
    exp.write_text("SIFA:\n  # sifa_kernel: [1, 3, 3, 3]\nsampler:\n  batch_size: 3\n")
    assert load_config(exp).batch_size == 3
    exp.write_text("SIFA: 3\n")
    with pytest.raises(ConfigError, match=r"exp\.yml: section 'SIFA' must hold keys \(e\.g\. sifa_kernel: \.\.\.\), "
                                          r"got 3"):
        load_config(exp)


def test_a_config_path_that_is_a_folder_or_not_utf8_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=rf"cannot read config file {tmp_path}: Is a directory"):
        load_config(tmp_path)
    exp = tmp_path / "exp.yml"
    exp.write_bytes("sampler:\n  batch_size: 3\noutput_dir: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"exp\.yml, line 3: byte 0xe9 is not UTF-8 text; a config file must be "
                                          r"UTF-8"):
        load_config(exp)
    base = tmp_path / "base.yml"
    base.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"base\.yml, line 1: byte 0xff"):
        load_config(write(exp, {"base": str(base)}))


def test_invalid_yaml_is_one_line_naming_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("dataset:\n  crop_size: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yml: invalid YAML: while parsing a flow sequence: .* "
                                          r"\(line 3, column 1\)") as err:
        load_config(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, fragment", [
    ("time_dim=C", "key 'time_dim' is 'C' (frames concatenated along channels), but c2d_sifa_resnet50, as every "
                   "network here, takes C×T×H×W clips"),
    ("seed=99999999999999999999", "key 'seed' must lie in [0, 2**32)"), ("seed=-1", "key 'seed' must lie in"),
    ("synthetic_frames=100000000000", "key 'synthetic_frames' (100000000000) of 64² RGB pixels make synthetic videos "
                                      "of 1.14e+06 GiB each"),
    ("synthetic_seed=-1", "key 'synthetic_seed' must not be negative")])
def test_values_the_network_seeding_or_data_cannot_take_are_config_errors(tmp_path, override, fragment):
    exp = write(tmp_path / "exp.yml", {})
    with pytest.raises(ConfigError) as err:
        check_model_config(load_config(exp, [override]))
    assert str(err.value).startswith("--opts: " if "seed" in override or "synthetic" in override else str(exp))
    assert fragment in str(err.value), str(err.value)


def test_an_output_dir_that_cannot_take_files_is_a_config_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    for output_dir, reason in [(tmp_path / "file", "File exists"), (tmp_path / "file" / "run", "Not a directory"),
                               ("out\0put", "embedded null byte")]:
        cfg = load_config(write(tmp_path / "exp.yml", {"output_dir": str(output_dir), "list_file": "train.txt",
                                                       "eva_inter": False}))
        with pytest.raises(ConfigError, match=rf"exp\.yml: key 'output_dir' .*: cannot write in this folder: {reason}"):
            check_run_inputs(cfg)
    # A read-only file system: the folder exists, creating a file in it fails (root writes in any folder).
    def read_only(**kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    cfg = load_config(write(tmp_path / "exp.yml", {"output_dir": str(tmp_path / "out"), "list_file": "train.txt",
                                                   "eva_inter": False}))
    with pytest.raises(ConfigError, match="cannot write in this folder: Read-only file system"):
        check_run_inputs(cfg)
