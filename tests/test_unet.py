"""The UNet matches improved-diffusion's parameter layout, so DiffPath/OpenAI checkpoints load."""
import json
from pathlib import Path

import pytest
import torch

from pathwatch.export.checkpoint import load_checkpoint
from pathwatch.export.unet import ModelConfig, UNetModel, preset_config, timestep_embedding

DATA = Path(__file__).parent / "data"
CONFIGS = Path(__file__).parents[1] / "configs" / "models"


def _layout(name: str) -> dict:
    return {k: tuple(v) for k, v in json.loads((DATA / f"improved_diffusion_{name}_keys.json").read_text()).items()}


@pytest.mark.parametrize("name,config", [("celeba32", "diffpath_celeba32.yaml"),
                                         ("imagenet64", "openai_imagenet64_uncond.yaml")])
def test_state_dict_layout_matches_improved_diffusion(name, config):
    from pathwatch.export.checkpoint import read_config_file

    with torch.device("meta"):
        model = UNetModel(read_config_file(CONFIGS / config))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _layout(name)


def test_foreign_pt_checkpoint_loads_strictly(tmp_path):
    """A .pt state dict saved with the CelebA configuration (random weights) loads by key and
    shape through torch.load(weights_only=True), and a wrong config is refused clearly."""
    cfg_file = CONFIGS / "diffpath_celeba32.yaml"
    layout = _layout("celeba32")
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) * 0.01 for k, shape in layout.items()}
    torch.save(state, tmp_path / "celeba.pt")
    loaded = load_checkpoint(tmp_path / "celeba.pt", cfg_file)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert loaded.config.learn_sigma and loaded.config.out_channels == 6
    with pytest.raises(ValueError, match="do not fit the config"):
        load_checkpoint(tmp_path / "celeba.pt", CONFIGS / "openai_imagenet64_uncond.yaml")
    with pytest.raises(ValueError, match="no model config"):
        load_checkpoint(tmp_path / "celeba.pt")


def test_forward_shapes_and_learned_sigma():
    cfg = preset_config("tiny", learn_sigma=True)
    model = UNetModel(cfg).eval()
    for p in model.parameters():  # zero-initialised output layers would hide wiring errors
        torch.nn.init.normal_(p, 0, 0.02)
    x = torch.randn(2, 3, 32, 32)
    y = model(x, torch.tensor([0.0, 999.0]))
    assert y.shape == (2, 6, 32, 32)
    assert not torch.allclose(y[0], y[1])  # the timestep embedding reaches the output


def test_timestep_embedding_is_cos_then_sin():
    e = timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    assert torch.allclose(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert e[1, 0] == pytest.approx(torch.cos(torch.tensor(10.0)).item())


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="num_channels=48"):
        ModelConfig(num_channels=48)
    with pytest.raises(ValueError, match="image_size=28"):
        ModelConfig(image_size=28)
    with pytest.raises(ValueError, match="preset 'huge'"):
        preset_config("huge")
