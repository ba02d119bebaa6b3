"""Fig. 5: the rates of every family, found by name, from models, state dicts and checkpoint files."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from acmix.analysis.rates import extract_rates, write_rates

SMALL = {  # one small build per family
    "acmix_resnet_tiny": {},
    "acmix_resnet26": {},
    "acmix_san10": dict(layers=(1, 1, 1, 1, 1), widths=(32, 64, 128, 128, 128), stem_chs=16),
    "acmix_pvt_tiny": dict(embed_dims=(16, 32, 40, 64), depths=(1, 1, 1, 1), img_size=64),
    "acmix_swin_tiny": dict(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4)),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_rates_of_every_family(name, tmp_path):
    model = timm.create_model(name, **SMALL[name])
    mixers = [m for m in model.modules() if hasattr(m, "rate1")]
    assert mixers
    gen = torch.Generator().manual_seed(1)
    expected = []
    with torch.no_grad():
        for m in mixers:
            a, b = torch.rand(2, generator=gen).tolist()
            m.rate1.fill_(a + 0.1)
            m.rate2.fill_(b)
            expected.append((m.rate1.item(), m.rate2.item()))
    rows = extract_rates(model)
    assert [(r["alpha"], r["beta"]) for r in rows] == expected
    assert [r["layer"] for r in rows] == list(range(len(mixers)))
    assert all(r["beta_over_alpha"] == pytest.approx(r["beta"] / r["alpha"]) for r in rows)
    # the same from files: safetensors, our checkpoint layout, a bare state dict
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(tmp_path / "m.safetensors"))
    torch.save({"model": sd, "epoch": 1}, tmp_path / "last.pth")
    torch.save(sd, tmp_path / "bare.pth")
    for f in ("m.safetensors", "last.pth", "bare.pth"):
        assert extract_rates(tmp_path / f) == rows


def test_fixed_rates_are_buffers_and_still_found():
    model = timm.create_model("acmix_resnet26", acmix_kwargs={"combination": "fixed"})
    rows = extract_rates(model)
    assert len(rows) == 8 and all(r["alpha"] == r["beta"] == 0.5 for r in rows)


def test_errors():
    with pytest.raises(ValueError, match="no ACmix rates"):
        extract_rates(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no matching"):
        extract_rates({"a.rate1": torch.ones(1)})
    with pytest.raises(FileNotFoundError):
        extract_rates("/nonexistent/model.safetensors")


def test_write_rates(tmp_path):
    runs = {f"seed {s}": extract_rates(timm.create_model("acmix_resnet_tiny")) for s in (0, 1)}
    paths = write_rates(runs, tmp_path)
    assert paths["png"].stat().st_size > 1000
    payload = json.loads(paths["json"].read_text())
    assert len(payload["rows"]) == 4 and payload["rows"][0]["run"] == "seed 0"
    assert paths["csv"].read_text().splitlines()[0].startswith("run,layer,name,alpha")
    assert "| run | layer |" in paths["md"].read_text()
