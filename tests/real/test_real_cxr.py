"""Every real chest X-ray in the shared sample set loads to a sane (1, 224, 224) tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtriad.data.cxr import read_cxr

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / ".." / "shared" / "data" / "cxr" / "covid_notes" / "images"


@pytest.fixture(scope="module")
def image_paths() -> list[Path]:
    if not IMAGES.is_dir():
        pytest.skip(f"real CXR sample not present at {IMAGES}")
    paths = sorted(p for p in IMAGES.iterdir() if p.is_file())
    if not paths:
        pytest.skip(f"no images in {IMAGES}")
    return paths


def test_every_real_image_loads(image_paths: list[Path]) -> None:
    modes: set[str] = set()
    for path in image_paths:
        with Image.open(path) as im:
            modes.add(im.mode)
        out = read_cxr(path, size=224)
        assert out.shape == (1, 224, 224) and out.dtype == np.float32, path
        assert np.isfinite(out).all(), path
        assert out.min() >= 0.0 and out.max() <= 1.0, path
        assert out.max() - out.min() > 0.1, path  # a radiograph, not a flat field
    assert len(modes) > 1, modes  # the sample really exercises several Pillow modes


def test_real_images_keep_aspect_with_padding(image_paths: list[Path]) -> None:
    """Images far from square get black bars on the short side when padded."""
    checked = 0
    for path in image_paths:
        with Image.open(path) as im:
            w, h = im.size
        if w < 1.2 * h:
            continue
        bar = round(224 * (1 - h / w) / 2) - 2
        out = read_cxr(path, size=224, fit="pad")[0]
        assert out[:bar].max() == 0.0 and out[-bar:].max() == 0.0, path
        checked += 1
        if checked == 5:
            break
    if checked == 0:
        pytest.skip("no wide image in the sample")
