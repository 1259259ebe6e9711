"""The ablation study's pieces (docs/reproduction.md): TSM, the SIFA offset ablations, the synthetic
regimes, and the runner's resume."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from helpers import REPO_ROOT
from sifa.data.synthetic import render_video
from sifa.models import get_model_by_name
from sifa.models.sifa_resnet import SIFABottleneck
from sifa.models.tsm_resnet import TSMBottleneck, temporal_shift
from sifa.ops import previous_frame
from sifa.tools import ablation

pytestmark = pytest.mark.slow  # the ablation's training runs


def test_temporal_shift_moves_an_eighth_of_the_channels_each_way_with_zero_padding() -> None:
    x = torch.randn(2, 16, 3, 4, 5)  # 16 channels: 2 move forward in time, 2 back, 12 stay
    expected = x.clone()
    for c in (0, 1):  # forward: frame t shows frame t-1, frame 0 shows zeros
        expected[:, c, 0] = 0
        expected[:, c, 1] = x[:, c, 0]
        expected[:, c, 2] = x[:, c, 1]
    for c in (2, 3):  # back: frame t shows frame t+1, the last frame zeros
        expected[:, c, 0] = x[:, c, 1]
        expected[:, c, 1] = x[:, c, 2]
        expected[:, c, 2] = 0
    assert torch.equal(temporal_shift(x), expected)


def test_tsm_block_shifts_only_the_residual_branch_and_adds_no_parameters() -> None:
    block = TSMBottleneck(16, 4).eval()
    seen = []
    block.conv1.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(1, 16, 3, 4, 4)
    block(x)
    assert torch.equal(seen[0], temporal_shift(x))
    tsm = get_model_by_name("c2d_tsm_resnet50", num_classes=4, clip_length=8)
    c2d = get_model_by_name("c2d_resnet50", num_classes=4, clip_length=8)
    assert {k: v.shape for k, v in tsm.state_dict().items()} == {k: v.shape for k, v in c2d.state_dict().items()}
    assert sum(m.numel() for m in tsm.parameters()) == sum(m.numel() for m in c2d.parameters())


def _sifa_net(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    net = get_model_by_name("c2d_sifa_resnet50", num_classes=4, clip_length=8, **kw).eval()
    # the last BN of every block starts at zero, which would silence the SIFA step: give it weight
    for block in net.modules():
        if isinstance(block, SIFABottleneck):
            torch.nn.init.constant_(block.bn3.weight, 1.0)
    return net


def _offset_convs(net: torch.nn.Module):
    return [m.conv_offset for m in net.modules() if isinstance(m, SIFABottleneck)]


def test_zero_offsets_make_the_logits_independent_of_conv_offset() -> None:
    video = torch.randn(1, 3, 8, 32, 32)
    learned, zero = _sifa_net(), _sifa_net(offset_mode="zero")
    before = [torch.cat(learned(video)), torch.cat(zero(video))]
    for net in (learned, zero):
        for conv in _offset_convs(net):
            torch.nn.init.normal_(conv.weight, std=1.0)
    after = [torch.cat(learned(video)), torch.cat(zero(video))]
    assert not torch.allclose(before[0], after[0])  # the learned offsets do depend on it
    assert torch.equal(before[1], after[1])
    zero.train()
    sum(logits.sum() for logits in zero(video)).backward()
    convs = _offset_convs(zero)
    assert all(conv.weight.grad is None for conv in convs)
    unused = {id(p) for m in zero.modules() if hasattr(m, "unused_parameters") for p in m.unused_parameters()}
    assert unused == {id(conv.weight) for conv in convs}
    assert not any(True for m in learned.modules() if hasattr(m, "unused_parameters") for _ in m.unused_parameters())


def test_zero_offset_init_starts_at_the_fixed_window_and_then_learns() -> None:
    video = torch.randn(1, 3, 8, 32, 32)
    kaiming, zero_init, fixed = _sifa_net(), _sifa_net(offset_init="zero"), _sifa_net(offset_mode="zero")
    assert all(conv.weight.abs().sum() > 0 for conv in _offset_convs(kaiming))  # the original's random start
    assert all(torch.count_nonzero(conv.weight) == 0 for conv in _offset_convs(zero_init))
    # same seed, so the other weights agree: at the start it is the fixed-window network
    assert not any(torch.equal(a, b) for a, b in zip(kaiming(video), fixed(video)))
    for a, b in zip(zero_init(video), fixed(video)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ... but its offsets take a gradient, unlike offset_mode zero's (except in layer4_dual: at 8 frames its
    # single feature frame has no next frame to attend to)
    sum(logits.sum() for logits in zero_init(video)).backward()
    learning = [m.conv_offset.weight.grad for name, m in zero_init.named_modules()
                if isinstance(m, SIFABottleneck) and not name.startswith("layer4_dual")]
    assert len(learning) == 6 and all(grad.abs().sum() > 0 for grad in learning)
    assert list(zero_init.state_dict()) == list(kaiming.state_dict())
    with pytest.raises(ValueError, match="offset_init must be one of"):
        _sifa_net(offset_init="uniform")


@pytest.mark.parametrize("guide", ["difference", "plain"])
def test_conv_offset_reads_the_guide_or_the_features(guide: str) -> None:
    block = SIFABottleneck(16, 8, times=4, kernel_size=3, offset_guide=guide)
    seen = []
    block.conv_offset.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    f = torch.randn(2, 8, 4, 5, 6)
    block.inter_frame(f)
    expected = f if guide == "plain" else torch.sigmoid(f - previous_frame(f)) * f + f
    torch.testing.assert_close(seen[0], expected)


def test_default_options_keep_the_state_dict_and_logits() -> None:
    video = torch.randn(1, 3, 8, 32, 32)
    default, explicit = _sifa_net(), _sifa_net(offset_mode="learned", offset_guide="difference")
    plain = _sifa_net(offset_guide="plain")
    assert list(default.state_dict()) == list(plain.state_dict())  # the ablations keep the layout too
    for a, b in zip(default(video), explicit(video)):
        assert torch.equal(a, b)


def test_fast_regime_moves_faster_and_slow_regime_is_the_default() -> None:
    def video(regime=None):
        rng = np.random.default_rng([0, 0, 0, 3])
        return np.stack(render_video(0, 8, 64, rng) if regime is None else render_video(0, 8, 64, rng, regime))

    assert np.array_equal(video(), video("slow"))
    # frame-to-frame change: the fast objects travel about three times as far per frame
    change = {r: np.abs(np.diff(video(r).astype(np.float32), axis=0)).mean() for r in ("slow", "fast")}
    assert change["fast"] > 1.5 * change["slow"]


def test_runner_resume_skips_finished_runs(tmp_path, monkeypatch) -> None:
    trained = []

    def fake_train(overrides, nproc, log_path, recipe, threads=None):
        opts = dict(o.split("=", 1) for o in overrides)
        trained.append((opts["net_name"], opts.get("offset_mode"), opts["seed"]))
        assert threads is None
        with open(os.path.join(opts["output_dir"], "val_accuracy.json"), "w") as f:
            json.dump([{"epoch": 1, "top1": 25.0, "top5": 100.0}], f)

    monkeypatch.setattr(ablation, "train", fake_train)
    budget = ablation.Budget(epochs=1, videos_per_class=1, val_videos_per_class=1, size=32, nproc=1)
    out = str(tmp_path)
    ablation.study(out, ["c2d", "sifa_fixed_window"], ["slow"], [0, 1], budget)
    assert len(trained) == 4
    results_path = os.path.join(out, "results.json")
    with open(results_path) as f:
        results = json.load(f)
    expected = {(v, s) for v in ("c2d", "sifa_fixed_window") for s in (0, 1)}
    assert {(e["variant"], e["seed"]) for e in results} == expected
    assert all(e["val_top1"] == [{"epoch": 1, "top1": 25.0}] and e["epochs"] == 1 for e in results)
    # as if interrupted before the last run finished
    with open(results_path, "w") as f:
        json.dump(results[:-1], f)
    trained.clear()
    ablation.study(out, ["c2d", "sifa_fixed_window"], ["slow"], [0, 1], budget)
    assert trained == [("c2d_sifa_resnet50", "zero", "1")]
    table = open(os.path.join(out, "results.md")).read()
    assert "25.0 ± 0.0 (25.0, 25.0)" in table and "| sifa_fixed_window | 25.0 |" in table
    assert os.path.getsize(os.path.join(out, "results.png")) > 0


def test_runner_runs_jobs_in_parallel_on_one_thread_each(tmp_path, monkeypatch) -> None:
    calls = []

    def fake_train(overrides, nproc, log_path, recipe, threads=None):
        opts = dict(o.split("=", 1) for o in overrides)
        calls.append((opts["net_name"], opts["sifa_stages"], opts.get("temporal_shift"), opts["seed"], threads))
        with open(os.path.join(opts["output_dir"], "val_accuracy.json"), "w") as f:
            json.dump([{"epoch": 1, "top1": 25.0 + int(opts["seed"]), "top5": 100.0}], f)

    monkeypatch.setattr(ablation, "train", fake_train)
    budget = ablation.Budget(epochs=1, videos_per_class=1, val_videos_per_class=1, size=32, nproc=1,
                             net="timm/resnet10t", sifa_stages=(1, 2), jobs=2)
    results = ablation.study(str(tmp_path), ["tsm", "sifa"], ["fast"], [0, 1, 2], budget)
    assert sorted(calls) == sorted([("timm/resnet10t", "[]", "residual", s, 1) for s in "012"]
                                   + [("timm/resnet10t", "[1, 2]", None, s, 1) for s in "012"])
    assert len(results) == 6 and len(json.load(open(tmp_path / "results.json"))) == 6
    md = open(tmp_path / "results.md").read()
    assert "| fast | sifa − c2d" not in md and "| tsm | 26.0 ± 2.5 (25.0, 26.0, 27.0) |" in md


def test_config_takes_the_ablations_for_sifa_resnets_only() -> None:
    from sifa.config import load_config
    from sifa.errors import ConfigError
    from sifa.models import check_model_config

    recipe = str(REPO_ROOT / ablation.RECIPE)
    cfg = load_config(recipe, ["offset_mode=zero", "offset_guide=plain", "offset_init=zero"])
    check_model_config(cfg)
    assert (cfg.offset_mode, cfg.offset_guide, cfg.offset_init) == ("zero", "plain", "zero")
    from sifa.models.build import build_model

    net = build_model(load_config(recipe, ["net_name=c2d_sifa_resnet50", "offset_init=zero"]), 1)
    assert all(torch.count_nonzero(conv.weight) == 0 for conv in _offset_convs(net))
    with pytest.raises(ConfigError, match="only the SIFA ResNets"):
        check_model_config(load_config(recipe, ["net_name=c2d_tsm_resnet50", "offset_mode=zero"]))
    with pytest.raises(ConfigError, match="only the SIFA ResNets"):
        check_model_config(load_config(recipe, ["net_name=c2d_resnet50", "offset_init=zero"]))
    with pytest.raises(ConfigError, match="offset_guide' must be one of"):
        check_model_config(load_config(recipe, ["offset_guide=features"]))


def test_runner_frames_flag_sets_the_videos_and_the_clip_length(tmp_path, monkeypatch) -> None:
    """--frames reaches the data sets (frames per video) and every run's clip_length (it was fixed at 8)."""
    seen = []

    def study(out, variants, regimes, seeds, budget, recipe):  # records the budget, runs nothing
        seen.append(budget)
        return []

    monkeypatch.setattr(ablation, "study", study)
    ablation.main(["--out", str(tmp_path / "study"), "--net", "timm/test_resnet", "--frames", "4",
                   "--recipe", str(REPO_ROOT / "settings" / "ablation_inflated.yml")])
    assert seen[0].frames == 4
    opts = dict(o.split("=", 1) for o in ablation.run_overrides("sifa", 0, {"root_path": "r", "train_list": "t",
                                                                            "val_list": "v", "class_names": "c"},
                                                                 "run", seen[0]))
    assert opts["clip_length"] == "4"
