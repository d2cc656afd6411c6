import pytest
import torch

from training.soup import main, soup
from training.sqllava.configs import config_to_dict
from training.train import build_model


def _ck(seed):
    torch.manual_seed(seed)
    m = build_model("tiny", "full")
    return {"model": m.state_dict(), "config": config_to_dict(m.cfg), "next_stage": 6, "probe": {"w": torch.ones(1) * seed}}


def test_a_soup_is_the_weighted_mean_rounded_to_fp16_with_the_second_runs_probe(tmp_path):
    a, b = _ck(1), _ck(2)
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    main([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--weight", "0.25", "--out", str(tmp_path / "s.pt")])
    s = torch.load(tmp_path / "s.pt")
    assert s["probe"]["w"].item() == 2 and s["next_stage"] == 6
    for k, v in s["model"].items():
        if v.is_floating_point():
            want = (0.75 * a["model"][k] + 0.25 * b["model"][k]).half().float()
            torch.testing.assert_close(v, want, rtol=0, atol=1e-3 * want.abs().max().item() + 1e-6)
            assert torch.equal(v, v.half().float())
    exact = soup(a, b, 0.25, fp16=False)["model"]
    k = next(k for k, v in exact.items() if v.is_floating_point() and v.numel() > 1 and v.std() > 0)
    assert not torch.equal(exact[k], exact[k].half().float())


def test_runs_of_different_models_do_not_mix():
    a, b = _ck(1), _ck(2)
    b["config"] = {**b["config"], "changed": True}
    with pytest.raises(ValueError, match="different model configurations"):
        soup(a, b, 0.5)


def test_a_bundle_folder_is_read_back_as_a_checkpoint(tmp_path):
    """`python -m training.soup models/sq-llava-micro RUN.pt`: the committed bundle's weights, read
    back from its ONNX files, average like a run's (here with itself: the bundle unchanged)."""
    from training.bundle import load_any
    main(["models/sq-llava-micro", "models/sq-llava-micro", "--out", str(tmp_path / "s.pt")])
    s = torch.load(tmp_path / "s.pt")
    want = load_any("models/sq-llava-micro")
    assert s["config"] == config_to_dict(want.cfg)
    # what no graph uses is not in the bundle (CLIP's last layer, post_layernorm, ln_1): initialised
    unused = ("vision_model.encoder.layers.4.", "vision_model.post_layernorm", "mm_projector.ln_1")
    held = [k for k in s["model"] if not any(u in k for u in unused)]
    assert s["model"].keys() == want.state_dict().keys() and len(held) > 100
    assert all(torch.equal(s["model"][k], want.state_dict()[k]) for k in held)
