"""The ablation runner's statistics (sifa/tools/stats.py) against hand-computed and tabulated values, and
its inflated variants reaching the networks: the SIFA options, and the temporal shift of the TSM arm."""
from __future__ import annotations

import math
import os

import pytest
import torch

from helpers import REPO_ROOT
from sifa.layers import sifa_layers
from sifa.models import get_model_by_name
from sifa.models.inflate import FrameBatchShift
from sifa.models.tsm_resnet import temporal_shift
from sifa.tools import ablation, stats

# Student's t 0.975-quantiles (two-sided 95 %), from the standard table
T975 = {1: 12.7062047, 2: 4.3026527, 3: 3.1824463, 4: 2.7764451, 5: 2.5705818, 6: 2.4469119, 9: 2.2621572,
        10: 2.2281389, 30: 2.0422725}


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_the_table(df) -> None:
    assert stats.t_quantile(0.975, df) == pytest.approx(T975[df], abs=1e-6)
    assert stats.t_quantile(0.025, df) == pytest.approx(-T975[df], abs=1e-6)


def test_t_cdf_closed_forms() -> None:
    # df 1 is Cauchy: 1/2 + atan(t)/π; df 2: 1/2 + t / (2 sqrt(2 + t²))
    for t in (-4.0, -1.0, 0.0, 0.3, 2.5):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-14)
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-14)
    assert stats.t_cdf(2.7764451, 4) == pytest.approx(0.975, abs=1e-8)
    assert stats.t_cdf(-2.5705818, 5) == pytest.approx(0.025, abs=1e-8)


def test_t_functions_agree_with_scipy_where_present() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in range(1, 25):
        for t in (-6.0, -1.3, 0.2, 1.96, 3.5):
            assert stats.t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-12)
        assert stats.t_quantile(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-9)


def test_mean_ci_by_hand() -> None:
    # 60, 70, 80, 90, 100: mean 80, sd sqrt(250) = 15.811, sem 7.0711, half-width 2.7764451 · 7.0711 = 19.632
    mean, half = stats.mean_ci([60.0, 70.0, 80.0, 90.0, 100.0])
    assert mean == 80.0 and half == pytest.approx(2.7764451 * math.sqrt(250 / 5), abs=1e-5)
    assert half == pytest.approx(19.6324, abs=1e-4)
    assert math.isnan(stats.mean_ci([50.0])[1])


def test_paired_t_by_hand() -> None:
    # differences 5, 10, 0, 5, 15: mean 7, sd sqrt(32.5) = 5.7009, sem 2.5495, t = 2.7456, df 4
    a, b = [65.0, 70.0, 60.0, 75.0, 80.0], [60.0, 60.0, 60.0, 70.0, 65.0]
    result = stats.paired_t(a, b)
    assert result["mean_diff"] == 7.0 and result["df"] == 4
    assert result["t"] == pytest.approx(7 / math.sqrt(32.5 / 5), abs=1e-9)
    assert result["ci95"] == pytest.approx(2.7764451 * math.sqrt(32.5 / 5), abs=1e-5)
    # P(|T4| ≥ 2.7456) just above 0.05 (the 0.975 quantile is 2.7764): 0.0516 by the closed form
    theta = math.atan(result["t"] / 2)
    assert result["p"] == pytest.approx(1 - math.sin(theta) * (1 + 0.5 * math.cos(theta) ** 2), abs=1e-12)
    assert 0.05 < result["p"] < 0.06
    assert stats.paired_t(a, a)["p"] == 1.0 and stats.paired_t([2.0, 3.0], [1.0, 2.0])["p"] == 0.0
    with pytest.raises(ValueError):
        stats.paired_t([1.0], [2.0])


def test_wilcoxon_and_sign_test_by_hand() -> None:
    # differences +1, +2, +3, +4, +5 (no ties): W+ = 15, the most extreme of 32 sign patterns, two-sided p 2/32
    a, b = [11.0, 12.0, 13.0, 14.0, 15.0], [10.0] * 5
    assert stats.wilcoxon_signed_rank(a, b) == {"w_plus": 15.0, "n": 5, "p": 2 / 32}
    assert stats.sign_test(a, b) == {"wins": 5, "losses": 0, "p": 2 / 32}
    # differences +1, -2, +3, +4, 0: the zero dropped, n 4, W+ = 1 + 3 + 4 = 8 of 10, |8 - 5| = 3:
    # patterns with W+ in {0, 1, 2, 8, 9, 10}: {}, {1}, {2}, {1,3,4}... counted: W+ ≤ 2 -> 3, W+ ≥ 8 -> 3
    a, b = [11.0, 8.0, 13.0, 14.0, 10.0], [10.0] * 5
    assert stats.wilcoxon_signed_rank(a, b) == {"w_plus": 8.0, "n": 4, "p": 6 / 16}
    assert stats.sign_test(a, b) == {"wins": 3, "losses": 1, "p": 2 * 5 / 16}
    # ties in |d| share ranks: d = 2, 2, -2 -> ranks 2, 2, 2, W+ = 4, centre 3; every pattern but W+ = 2 or 4
    # is at distance 3 (W+ 0 or 6): all 8 patterns are at least as extreme
    assert stats.wilcoxon_signed_rank([3.0, 3.0, -1.0], [1.0, 1.0, 1.0])["p"] == 1.0
    assert stats.wilcoxon_signed_rank(a, a)["p"] == 1.0 and stats.sign_test(a, a)["p"] == 1.0


def test_wilcoxon_agrees_with_scipy_without_ties() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    a = [61.7, 70.0, 58.3, 66.7, 75.0, 63.3]
    b = [60.0, 61.0, 62.5, 55.0, 71.0, 50.0]
    assert stats.wilcoxon_signed_rank(a, b)["p"] == pytest.approx(
        scipy_stats.wilcoxon(a, b, method="exact").pvalue, abs=1e-12)
    assert stats.paired_t(a, b)["p"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, abs=1e-12)


def _entry(variant, regime, seed, top1):
    return {"variant": variant, "regime": regime, "seed": seed, "epochs": 2,
            "val_top1": [{"epoch": 1, "top1": 25.0}, {"epoch": 2, "top1": top1}]}


def test_results_md_reports_ci_and_the_paired_test() -> None:
    sifa = [65.0, 70.0, 60.0, 75.0, 80.0]
    fixed = [60.0, 60.0, 60.0, 70.0, 65.0]
    results = [_entry("sifa", "fast", s, v) for s, v in enumerate(sifa)]
    results += [_entry("sifa_fixed_window", "fast", s, v) for s, v in enumerate(fixed)]
    results.append(_entry("sifa_fixed_window", "fast", 5, 99.0))  # no partner: left out of the pair
    table = ablation.markdown_table(results)
    # 65, 70, 60, 75, 80: mean 70, sd sqrt(62.5), half-width 2.7764451 · sqrt(62.5 / 5) = 9.82
    assert "| sifa | 70.0 ± 9.8 (65.0, 70.0, 60.0, 75.0, 80.0) |" in table
    (row,) = ablation.comparisons(results)
    assert row["seeds"] == [0, 1, 2, 3, 4] and row["t_test"]["mean_diff"] == 7.0
    text = ablation.markdown_comparisons(results)
    assert "| fast | sifa − sifa_fixed_window | 5 | +7.0 ± 7.1 | 2.75 (4) | 0.052 |" in text
    summary = ablation.results_json_summary(results)
    assert summary["final_top1"]["sifa/fast"]["ci95"] == pytest.approx(2.7764451 * math.sqrt(62.5 / 5), abs=1e-5)


# ------------------------------------------------------------------- the inflated variants reach the network
def test_frame_batch_shift_is_the_clip_shift_by_hand() -> None:
    x = torch.randn(2 * 3, 16, 2, 2)  # 2 clips of 3 frames, 16 channels: 2 forward, 2 back, 12 stay
    (out,) = FrameBatchShift(3)(None, (x,))
    clips = x.view(2, 3, 16, 2, 2)
    expected = clips.clone()
    for n in range(2):
        for c in (0, 1):  # frame t shows frame t-1, frame 0 zeros
            expected[n, 0, c], expected[n, 1, c], expected[n, 2, c] = 0, clips[n, 0, c], clips[n, 1, c]
        for c in (2, 3):  # frame t shows frame t+1, the last zeros
            expected[n, 0, c], expected[n, 1, c], expected[n, 2, c] = clips[n, 1, c], clips[n, 2, c], 0
    assert torch.equal(out, expected.view(6, 16, 2, 2))
    assert torch.equal(out, temporal_shift(clips.transpose(1, 2)).transpose(1, 2).reshape(6, 16, 2, 2))


def test_inflated_tsm_shifts_every_residual_branch_and_keeps_the_state_dict() -> None:
    torch.manual_seed(0)
    tsm = get_model_by_name("timm/resnet10t", num_classes=4, clip_length=4, sifa_stages=[],
                            temporal_shift="residual").eval()
    torch.manual_seed(0)
    c2d = get_model_by_name("timm/resnet10t", num_classes=4, clip_length=4, sifa_stages=[]).eval()
    assert tsm.shifted == ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
    assert c2d.shifted == []
    assert list(tsm.state_dict()) == list(c2d.state_dict())
    for net in (tsm, c2d):  # timm zero-initialises each block's last BN, which would silence the branches
        for name, module in net.named_modules():
            if name.endswith(".bn2"):
                torch.nn.init.constant_(module.weight, 1.0)
    seen = []
    tsm.backbone.layer2[0].conv1.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    inputs = []
    tsm.backbone.layer2[0].register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        out_tsm, out_c2d = tsm(x)[0], c2d(x)[0]
    (shifted,) = FrameBatchShift(4)(None, (inputs[0],))
    assert torch.equal(seen[0], shifted) and not torch.equal(seen[0], inputs[0])
    assert not torch.allclose(out_tsm, out_c2d)
    # order-blind C2D: reversing the frames leaves its logits; TSM's change
    with torch.no_grad():
        assert torch.allclose(c2d(x.flip(2))[0], out_c2d, atol=1e-5)
        assert not torch.allclose(tsm(x.flip(2))[0], out_tsm, atol=1e-5)
    with pytest.raises(ValueError, match="temporal_shift must be one of"):
        get_model_by_name("timm/resnet10t", num_classes=4, clip_length=4, sifa_stages=[], temporal_shift="left")


@pytest.mark.parametrize("variant", list(ablation.INFLATED_VARIANTS))
def test_inflated_variants_build_the_networks_they_name(variant) -> None:
    budget = ablation.Budget(net="timm/resnet10t", sifa_stages=(1, 2))
    keys = ablation.network_overrides(variant, budget)
    assert keys["net_name"] == "timm/resnet10t"
    overrides = ablation.run_overrides(variant, 0, {"root_path": "r", "train_list": "t", "val_list": "v",
                                                    "class_names": "c"}, "out", budget)
    assert ("sifa_stages=[]" if variant.startswith(("c2d", "tsm")) else "sifa_stages=[1, 2]") in overrides
    from sifa.config import load_config
    from sifa.models.build import build_model  # the training's path: configuration -> network
    model = build_model(load_config(os.path.join(REPO_ROOT, "settings", "ablation.yml"), overrides), 1)
    layers = sifa_layers(model)
    assert bool(model.shifted) == (variant == "tsm")
    if variant.startswith(("c2d", "tsm")):
        assert layers == {}
        return
    assert len(layers) == 2
    for layer in layers.values():
        assert layer.offset_mode == ("zero" if variant == "sifa_fixed_window" else "learned")
        assert layer.offset_guide == ("plain" if variant == "sifa_plain_guide" else "difference")
        if layer.offset_mode == "learned":
            assert (layer.conv_offset.weight.abs().sum() == 0) == (variant == "sifa_zero_init")


# ------------------------------------------------------------------- the inflated recipe's light augmentation
def test_without_colour_and_with_whole_frame_crops_the_training_clip_is_the_video() -> None:
    import numpy as np

    from sifa.data.transforms import TrainClipTransform

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    transform = TrainClipTransform(32, no_horizontal_flip=True, colour=False, min_crop_scale=1.0)
    for _ in range(5):  # whatever the draws: the whole frame, at its own size, no colour step
        clip = transform(frames)
        assert torch.equal(clip, torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2))


def test_colour_augment_and_min_crop_scale_reach_the_training_transform(monkeypatch) -> None:
    from sifa.config import ConfigError, load_config
    from sifa.data import build

    cfg = load_config(os.path.join(REPO_ROOT, "settings", "ablation_inflated.yml"),
                      ["list_file=l", "root_path=r", "eva_list_file=v"])
    assert cfg.colour_augment is False and cfg.min_crop_scale == 1.0
    with pytest.raises(ConfigError, match="min_crop_scale"):
        load_config(os.path.join(REPO_ROOT, "settings", "ablation_inflated.yml"), ["min_crop_scale=0"])
    default = load_config(os.path.join(REPO_ROOT, "settings", "ablation.yml"), [])
    assert default.colour_augment is True and default.min_crop_scale == 0.2
    made = []
    monkeypatch.setattr(build, "TrainClipTransform", lambda *args, **kw: made.append(kw))
    monkeypatch.setattr(build, "VideoDataset", lambda *args, **kw: None)
    build.build_train_dataset(cfg)
    build.build_train_dataset(default)
    assert [(kw["colour"], kw["min_crop_scale"]) for kw in made] == [(False, 1.0), (True, 0.2)]


# ------------------------------------------------------------------- an inflated network trains on 2 processes
@pytest.mark.slow  # a 2-process training run (about a minute on 2 idle cores)
@pytest.mark.parametrize("seed", [0])  # seeds 1 and 2 pass too (below)
def test_two_process_training_of_an_inflated_resnet18_fits_the_synthetic_videos_far_above_chance(tmp_path, seed):
    """timm/resnet18 with a SIFA layer after layer2, DDP on 2 processes (settings/ablation_inflated.yml's
    recipe), 4 epochs of 6 steps on 96 synthetic fast-motion videos of 4 classes, evaluated on those videos
    (the evaluation's centre crop): top-1 ≥ 50 % where chance is 25 % (P(X ≥ 48 of 96) by chance is about
    1e-8). The training fits its videos; whether it generalises is docs/reproduction.md's study. Measured
    on the loaded 2-core machine: top-1 after epochs 1-4 of seeds 0, 1, 2: 33.3/50.0/58.3/75.0,
    37.5/43.8/54.2/72.9, 38.5/49.0/63.5/72.9 (of a 6-epoch schedule; 87.5, 84.4, 77.1 after epoch 6)."""
    import json

    import yaml

    from helpers import launch
    from sifa.data import synthetic

    data = synthetic.generate(str(tmp_path / "data"), num_classes=4, videos_per_class=24, val_videos_per_class=1,
                              frames=8, size=32, seed=0, regime="fast")
    recipe = yaml.safe_load(open(os.path.join(REPO_ROOT, "settings", "ablation_inflated.yml"), encoding="utf-8"))
    recipe["dataset"].update(root_path=data["root_path"], list_file=data["train_list"],
                             eva_list_file=data["train_list"], class_name_file=data["class_names"])
    recipe["optimizer"].update(epochs=4, base_learning_rate=0.01)  # the lr the values below were measured at
    recipe["network"].update(net_name="timm/resnet18", sifa_stages=[2], dropout_ratio=0.0)
    recipe["logging"].update(output_dir=str(tmp_path / "out"), seed=seed)
    config = tmp_path / "fit.yml"
    config.write_text(yaml.safe_dump(recipe))
    launch(2, config)
    history = json.loads((tmp_path / "out" / "val_accuracy.json").read_text())
    assert len(history) == 4
    assert history[-1]["top1"] >= 50.0, history
