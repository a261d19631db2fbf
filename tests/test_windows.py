import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from geoseg.errors import ConfigError
from geoseg.windows import choose_block_size, make_grid, split_axis


@settings(max_examples=400, deadline=None)
@given(width=st.integers(1, 700), height=st.integers(1, 700),
       tile=st.sampled_from([16, 32, 48, 64, 100, 128, 256]), overlap_frac=st.floats(0, 0.49),
       block=st.sampled_from([None, 16, 64, 96, 512]), align=st.sampled_from([1, 2, 8, 16]))
def test_grid_covers_every_pixel_exactly_once(width, height, tile, overlap_frac, block, align):
    assume(tile % align == 0)  # make_grid refuses other tiles (the network needs it)
    overlap = min(int(tile * overlap_frac), (tile - 1) // 2)
    g = make_grid(width, height, tile, overlap, block, align=align)
    hits = np.zeros((height, width), np.int32)
    regions = np.zeros((height, width), np.int32)
    for u in g:
        regions[u.region.slices()] += 1
        # output blocks are aligned with the internal tiling of the output file
        assert u.region.col % g.block == 0 and u.region.row % g.block == 0
        assert u.region.width == min(g.block, width - u.region.col)
        for w in u.windows:
            # cropped at image borders (never rescaled), on the alignment otherwise
            assert w.read.width <= tile and w.read.height <= tile
            assert w.read.width % align == 0 and w.read.height % align == 0
            assert w.core.intersection(u.region) == w.core        # core inside its unit
            assert w.read.intersection(w.core) == w.core          # core inside its window
            bonus = overlap - overlap // 2
            assert w.core.width <= min(tile, tile - overlap + bonus * ((w.core.col == 0) + (w.core.col_stop == width)))
            assert w.core.height <= min(tile, tile - overlap + bonus * ((w.core.row == 0) + (w.core.row_stop == height)))
            # a window leaves the image only where the image is smaller than a tile, or
            # by less than `align` px at the far edge to stay on the pooling lattice
            assert w.read.col >= 0 and w.read.row >= 0
            if width >= tile:
                assert w.read.col_stop < width + align
            else:
                assert w.read.col == 0
            if height >= tile:
                assert w.read.row_stop < height + align
            else:
                assert w.read.row == 0
            if overlap // 2 >= align:  # enough slack: every window is on the lattice
                assert w.read.col % align == 0 and w.read.row % align == 0
            hits[w.core.slices()] += 1
    assert (hits == 1).all()
    assert (regions == 1).all()


@settings(max_examples=100, deadline=None)
@given(width=st.integers(300, 2000), tile=st.sampled_from([64, 128, 256]), overlap=st.integers(0, 31))
def test_cores_keep_half_overlap_of_context(width, tile, overlap):
    """Where the image allows, every core has >= overlap/2 pixels of context each side."""
    g = make_grid(width, 40, tile, overlap)
    for u in g:
        for w in u.windows:
            left = w.core.col - w.read.col
            right = w.read.col_stop - w.core.col_stop
            if w.core.col >= overlap // 2:
                assert left >= overlap // 2
            if width - w.core.col_stop >= overlap // 2:
                assert right >= overlap // 2


def test_block_size_follows_stride():
    assert choose_block_size(256, 32) == 448
    assert choose_block_size(256, 64) == 576
    assert choose_block_size(256, 50) == 512   # stride 206 is not a multiple of 16
    assert choose_block_size(512, 0) == 512


@pytest.mark.parametrize("n", [1000, 1024, 2048, 4096, 10980])
def test_model_input_area_is_flat_across_sizes(n):
    """Trimmed border windows: the network looks at ~1.3x the scene whatever its size."""
    g = make_grid(n, n, 256, 32, align=8)
    px = sum(w.read.width * w.read.height for u in g for w in u.windows)
    assert 1.28 < px / n / n < 1.33


def test_border_cores_save_windows():
    # 10980 = 24 blocks of 448 + 228: the last 228 px fit one border core of <= 240
    g = make_grid(10980, 300, 256, 32)
    assert len({w.core.col for u in g for w in u.windows}) == 49


def test_split_axis():
    assert split_axis(0, 10, 4) == [(0, 4), (4, 3), (7, 3)]
    assert split_axis(5, 3, 10) == [(5, 3)]


@pytest.mark.parametrize("tile,overlap", [(8, 0), (64, 32), (64, 40), (64, -1), (0, 0)])
def test_invalid_tiling(tile, overlap):
    with pytest.raises(ConfigError):
        make_grid(100, 100, tile, overlap)


def test_invalid_block():
    with pytest.raises(ConfigError, match="multiple of 16"):
        make_grid(100, 100, 64, 8, block=100)


@pytest.mark.parametrize("n,tile,overlap", [(49, 48, 13), (48, 48, 12), (257, 256, 31), (1, 256, 32)])
def test_core_never_exceeds_tile(n, tile, overlap):
    g = make_grid(n, n, tile, overlap)
    for u in g:
        for w in u.windows:
            assert w.core.width <= tile and w.core.height <= tile
            assert w.read.intersection(w.core) == w.core


def test_aligned_windows_keep_context():
    g = make_grid(1000, 700, 256, 32, align=8)
    for u in g:
        for w in u.windows:
            assert w.read.col % 8 == 0 and w.read.row % 8 == 0
            if w.core.col > 0:
                assert w.core.col - w.read.col >= 16 - 4
            if w.core.col_stop < 1000:
                assert w.read.col_stop - w.core.col_stop >= 16 - 4
