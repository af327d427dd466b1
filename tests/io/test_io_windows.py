"""CT windows, percentile scaling and the automatic choice between them."""

from __future__ import annotations

import numpy as np
import pytest

from medsam3.io import (
    WINDOW_PRESETS,
    apply_window,
    choose_intensity,
    get_window_preset,
    looks_like_hu,
    parse_window,
    percentile_range,
    scale_percentiles,
)

# preset -> (level, width, {HU: expected uint8})
EXPECTED = {
    "soft_tissue": (40, 400, {-1000: 0, -160: 0, 40: 128, 140: 191, 240: 255, 1000: 255}),
    "lung": (-600, 1500, {-1350: 0, -600: 128, -225: 191, 150: 255, 400: 255, -2000: 0}),
    "bone": (400, 1800, {-500: 0, 400: 128, 850: 191, 1300: 255, 3000: 255}),
    "brain": (40, 80, {0: 0, 40: 128, 60: 191, 80: 255, -100: 0}),
    "liver": (60, 160, {-20: 0, 60: 128, 100: 191, 140: 255, 400: 255}),
}


def test_preset_table_is_documented_values():
    assert set(WINDOW_PRESETS) == set(EXPECTED)
    for name, (level, width, _) in EXPECTED.items():
        p = WINDOW_PRESETS[name]
        assert (p.level, p.width) == (level, width)
        assert (p.low, p.high) == (level - width / 2, level + width / 2)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_known_hu_gives_known_uint8(name):
    level, width, table = EXPECTED[name]
    hu = np.array(list(table), dtype=np.int16)
    out = apply_window(hu, level, width)
    assert out.dtype == np.uint8
    assert out.tolist() == list(table.values())
    # Same result through the preset name and the auto-choice machinery.
    mapping = choose_intensity(hu.astype(np.float32), window=name, modality="CT")
    assert mapping.apply(hu).tolist() == list(table.values())
    assert mapping.description == f"CT window {name} (L{level} W{width})"


def test_apply_window_keeps_shape_and_handles_nan():
    arr = np.full((2, 3, 4), 40.0, dtype=np.float32)
    arr[0, 0, 0] = np.nan
    out = apply_window(arr, 40, 400)
    assert out.shape == arr.shape and out[0, 0, 0] == 0 and out[1, 2, 3] == 128
    with pytest.raises(ValueError):
        apply_window(arr, 40, 0)


def test_preset_names_are_forgiving_and_strict():
    assert get_window_preset("Soft-Tissue").name == "soft_tissue"
    assert get_window_preset("soft tissue").name == "soft_tissue"
    with pytest.raises(ValueError, match="lung"):
        get_window_preset("lungs")


@pytest.mark.parametrize(
    ("spec", "level", "width"),
    [
        ((300, 1500), 300, 1500),
        ("40,400", 40, 400),
        ("-600:1500", -600, 1500),
        ("L-600 W1500", -600, 1500),
        ("bone", 400, 1800),
    ],
)
def test_parse_window_forms(spec, level, width):
    parsed = parse_window(spec)
    assert parsed.preset is not None and (parsed.preset.level, parsed.preset.width) == (level, width)


@pytest.mark.parametrize("spec", ["nonsense", (40,), (40, -5), "40,", 7])
def test_parse_window_rejects(spec):
    with pytest.raises(ValueError):
        parse_window(spec)


def test_percentile_scaling_16bit_is_scaled_not_clipped():
    values = np.linspace(0, 4000, 10_000).reshape(100, 100).astype(np.uint16)
    out = scale_percentiles(values)
    lo, hi = percentile_range(values)
    assert lo == pytest.approx(20, abs=1) and hi == pytest.approx(3980, abs=1)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotonic
    assert (out == 255).mean() < 0.01  # not clipped at 8 bit (values > 255 are not all white)
    assert out.ravel()[5000] == pytest.approx(128, abs=1)  # mid-range value -> mid-gray


def test_percentile_range_falls_back_to_minmax_and_handles_constant():
    sparse = np.zeros((100, 100), dtype=np.uint16)
    sparse[0, :5] = 1000  # 0.05% of pixels: percentiles coincide at 0
    assert percentile_range(sparse) == (0.0, 1000.0)
    assert scale_percentiles(np.full((4, 4), 7.0)).max() == 0
    assert percentile_range(np.full(5, np.nan)) == (0.0, 0.0)


def test_auto_choice_by_modality_and_dtype():
    rng = np.random.default_rng(0)
    ct = rng.integers(-1024, 1500, size=(64, 64)).astype(np.float32)
    mr = rng.integers(0, 3000, size=(64, 64)).astype(np.float32)
    rgb8 = rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8)

    m = choose_intensity(ct, modality="CT")
    assert m.kind == "window" and m.description == "CT window soft_tissue (L40 W400)"
    m = choose_intensity(mr, modality="MR")
    assert m.kind == "percentile" and m.description.startswith("MR percentile scaling p0.5-p99.5")
    m = choose_intensity(rgb8)
    assert m.kind == "identity" and m.description == "8-bit RGB unchanged"
    np.testing.assert_array_equal(m.apply(rgb8), rgb8)
    # Unknown modality: HU-like signed data is treated as CT, and says so.
    m = choose_intensity(ct)
    assert m.kind == "window" and "HU-like" in m.description
    assert choose_intensity(mr).kind == "percentile"
    # Explicit percentile override on CT, and the DICOM file's own window.
    assert choose_intensity(ct, modality="CT", window="percentile").kind == "percentile"
    m = choose_intensity(ct, modality="CT", window="dicom", file_window=(50, 350))
    assert (m.level, m.width) == (50, 350)
    with pytest.raises(ValueError, match="WindowCenter"):
        choose_intensity(ct, modality="CT", window="dicom")


def test_invert_flips_display():
    values = np.array([[0, 100, 200]], dtype=np.float32)
    normal = choose_intensity(values, modality="CR")
    inverted = choose_intensity(values, modality="CR", invert=True)
    np.testing.assert_array_equal(inverted.apply(values), 255 - normal.apply(values))
    assert "inverted" in inverted.description


def test_looks_like_hu():
    assert looks_like_hu(np.r_[np.full(100, -1000.0), np.linspace(-100, 1500, 900)])
    assert looks_like_hu(np.r_[np.full(100, -3024), np.linspace(-100, 1500, 900)].astype(np.int16))
    assert not looks_like_hu(np.linspace(0, 4000, 1000))  # MR-like
    assert not looks_like_hu(np.linspace(0, 255, 1000).astype(np.uint8))
    assert not looks_like_hu(np.r_[np.full(100, -5000.0), np.linspace(-100, 1500, 900)])
