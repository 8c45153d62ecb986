"""The numba band-pass filter against scipy, chunked filtering, errors, frequency response."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from phy_core.errors import PhyError
from phy_detect.filtering import STAGES, Filter, FilterError

RATE = 30000.0


def _scipy(fil, x):
    sos = signal.butter(fil.order, (fil.low, fil.high), "bandpass", fs=fil.rate, output="sos")
    return signal.sosfiltfilt(sos, np.asarray(x, dtype=np.float64), axis=0)


def _spiky(n, c, rng):
    """Noise plus negative spike-like bumps and a slow drift (what traces look like)."""
    x = rng.normal(0, 20, (n, c))
    t = np.arange(n)[:, None]
    x += 300 * np.sin(2 * np.pi * 3 * t / RATE) + 500  # offset + drift (filtered out)
    wave = -200 * np.exp(-0.5 * ((np.arange(-20, 21)) / 4.0) ** 2)
    for s in rng.integers(30, n - 30, 20):
        ch = rng.integers(0, c)
        x[s - 20 : s + 21, ch] += wave
    return x.astype(np.float32)


@pytest.mark.parametrize("n_channels", [1, 7, 64])
@pytest.mark.parametrize("kind", ["random", "spiky"])
def test_matches_sosfiltfilt(n_channels, kind):
    rng = np.random.default_rng(n_channels)
    n = 3000
    x = (
        rng.normal(size=(n, n_channels)).astype(np.float32)
        if kind == "random"
        else (_spiky(n, n_channels, rng))
    )
    fil = Filter(RATE)
    y = fil(x)
    ref = _scipy(fil, x)
    assert y.dtype == np.float32 and y.shape == x.shape
    scale = ref.std()
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * scale)
    # Edges included: compare the first and last samples specifically.
    np.testing.assert_allclose(y[:50], ref[:50], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(y[-50:], ref[-50:], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "options",
    [
        # Threads and float32 state together: each numba specialisation compiled
        # in the tests costs seconds (the benchmark runs the other combinations).
        dict(n_threads=2, precision="float32"),
        dict(n_threads=3),
        dict(rate=20000.0, low=300.0, high=6000.0, order=4),
        dict(order=1),
        dict(order=2, low=100.0, high=13500.0),
        # Above order 3: scipy's sections, in groups of 3 (7 = 3 + 3 + 1 padded).
        dict(order=7, low=300.0, high=6000.0),
        dict(order=5, precision="float32"),
    ],
)
def test_variants_match_scipy(options):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(2000, 37)) * 50).astype(np.float32)
    rate = options.pop("rate", RATE)
    fil = Filter(rate, **options)
    ref = _scipy(fil, x)
    # float32 state: ~1e-5 of the scale; float64 state: ~1e-7.
    tol = 1e-4 if fil.precision == "float32" else 1e-5
    np.testing.assert_allclose(fil(x), ref, rtol=0, atol=tol * ref.std())


@pytest.mark.parametrize("n_channels", [1, 15, 16, 17, 40, 1024])
def test_channel_blocks_threads_and_out(n_channels):
    """Partial channel blocks, thread splits, `out` and in place: the same numbers.

    The kernel filters blocks of 16 channels (the last one padded) in tiles
    of rows (6 at 1024 channels, 32 here otherwise); 131 rows are no whole
    number of tiles. Threads split the blocks, each block is computed the
    same way, so the results are identical to the bit.
    """
    rng = np.random.default_rng(n_channels)
    x = _spiky(131, n_channels, rng)
    fil = Filter(RATE)
    y = fil(x)
    ref = _scipy(fil, x)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * ref.std())
    np.testing.assert_array_equal(Filter(RATE, n_threads=2)(x), y)
    out = np.full_like(x, np.nan)
    assert fil(x, out=out) is out
    np.testing.assert_array_equal(out, y)
    x_copy = x.copy()
    fil(x_copy, out=x_copy)
    np.testing.assert_array_equal(x_copy, y)


def test_1d_int16_inplace_and_out():
    rng = np.random.default_rng(4)
    x = rng.integers(-1000, 1000, (1500, 5)).astype(np.int16)
    fil = Filter(RATE)
    ref = fil(x.astype(np.float32))
    np.testing.assert_array_equal(fil(x), ref)  # any dtype in, float32 out
    np.testing.assert_array_equal(fil(x[:, 2]), ref[:, 2])  # 1D: one channel
    x32 = x.astype(np.float32)
    assert fil(x32, out=x32) is x32  # in place
    np.testing.assert_array_equal(x32, ref)
    with pytest.raises(FilterError, match="out"):
        fil(x, out=np.empty((10, 5), np.float32))


@pytest.mark.parametrize("n_channels", [1, 16, 37])
def test_int16_filtered_without_a_float32_copy_gives_the_same_bits(n_channels):
    # int16 traces go to the kernels as they are (converted while copied into `out`):
    # the float32 path, for whole and partial channel blocks. Bit for bit with the default
    # float64 state; with float32 state, to its own precision (~1e-5 of the scale): LLVM
    # may contract its int16 and float32 specialisations differently (seen only after
    # other specialisations were compiled in the same process).
    rng = np.random.default_rng(n_channels)
    x = rng.integers(-3000, 3000, (2000, n_channels)).astype(np.int16)
    for precision in ("float64", "float32"):
        fil = Filter(RATE, precision=precision)
        ref = fil(x.astype(np.float32))
        out = np.full(x.shape, np.nan, np.float32)
        assert fil(x, out=out) is out
        if precision == "float64":
            np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))
        else:
            np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
        np.testing.assert_allclose(out, _scipy(fil, x.astype(np.float64)), rtol=0,
                                   atol=2e-4 * np.abs(ref).max())


@pytest.mark.parametrize("n_channels, n_samples", [
    (1, 131), (15, 1000), (16, 2049), (17, 1500), (40, 3000), (384, 2500), (1024, 700),
])
def test_transposed_output_is_the_transpose_bit_for_bit(n_channels, n_samples):
    """`transposed` receives the result channel-major, the same bits as the output.

    The backward pass transposes its rows by panels (336 rows at 384 channels,
    256 at 1024, 1024 below 128 channels) of 16 x 16 blocks, the channels and rows
    left over element by element: these sizes have several panels, rows that are
    no whole number of blocks, tiles and panels, and partial channel blocks. With
    threads, each transposes its own channel blocks.
    """
    rng = np.random.default_rng(n_channels)
    x = _spiky(n_samples, n_channels, rng)
    for fil in (Filter(RATE), Filter(RATE, precision="float32", n_threads=2),
                Filter(20000.0, 300.0, 6000.0, order=5)):  # general sections, two groups
        y = fil(x)
        out = np.full_like(x, np.nan)
        xt = np.full(x.shape[::-1], np.nan, np.float32)
        assert fil(x, out=out, transposed=xt) is out
        # The transposed copy has the bits of the output written with it...
        np.testing.assert_array_equal(xt.view(np.uint32),
                                      np.ascontiguousarray(out.T).view(np.uint32))
        # ... which are those without it, up to the rounding of the state's precision:
        # each is its own numba compilation (fastmath), and which one the dispatcher
        # picks for a single thread once a parallel variant is compiled in the same
        # process changes the last bits (measured: up to 1e-5 of the scale, float32 state).
        tol = 1e-4 if fil.precision == "float32" else 1e-6
        np.testing.assert_allclose(out, y, rtol=0, atol=tol * np.abs(y).max())
    # In place (the template matching's use), and int16 traces.
    fil = Filter(RATE)
    x_copy, xt = x.copy(), np.empty(x.shape[::-1], np.float32)
    fil(x_copy, out=x_copy, transposed=xt)
    np.testing.assert_array_equal(xt, x_copy.T)
    np.testing.assert_allclose(xt, fil(x).T, rtol=0, atol=1e-6 * np.abs(x_copy).max())
    raw = rng.integers(-3000, 3000, x.shape).astype(np.int16)
    y = fil(raw, transposed=xt)
    np.testing.assert_array_equal(xt, y.T)


def test_transposed_output_one_channel_and_errors():
    rng = np.random.default_rng(3)
    x = _spiky(500, 3, rng)
    fil = Filter(RATE)
    xt = np.empty(500, np.float32)
    np.testing.assert_array_equal(fil(x[:, 1], transposed=xt), xt)  # 1D: (n,) or (1, n)
    for bad in (np.empty((500, 3), np.float32), np.empty((3, 500), np.float64),
                np.empty((3, 1000), np.float32)[:, ::2]):
        with pytest.raises(FilterError, match="transposed"):
            fil(x, transposed=bad)


@pytest.mark.parametrize("rate", [30000.0, 20000.0])
@pytest.mark.parametrize("chunk", [500, 1234])
def test_chunked_equals_whole(rate, chunk):
    rng = np.random.default_rng(5)
    x = _spiky(6000, 6, rng)
    fil = Filter(rate)
    whole = fil(x)
    m = fil.margin_samples
    assert 0 < m < 2000
    parts = []
    for start in range(0, len(x), chunk):
        end = min(start + chunk, len(x))
        a, b = max(0, start - m), min(len(x), end + m)
        # Done by hand here; filter_chunk (checked below) does the same.
        parts.append(fil(x[a:b])[start - a : end - a])
    chunked = np.concatenate(parts)
    scale = whole.std()
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=2e-6 * scale)
    by_method = np.concatenate(
        [fil.filter_chunk(x, s, min(s + chunk, len(x))) for s in range(0, len(x), chunk)]
    )
    np.testing.assert_array_equal(by_method, chunked)
    # The margin is needed: a third of it is visibly wrong.
    s = 3 * chunk
    short = fil.filter_chunk(x, s, s + chunk, margin=m // 3)
    assert np.abs(short - whole[s : s + chunk]).max() > 1e-3 * scale


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rate=30000.0, low=0.0), "0 < low < high"),
        (dict(rate=30000.0, low=-5.0), "low=-5.0"),
        (dict(rate=30000.0, low=5000.0, high=4000.0), "high=4000.0"),
        (dict(rate=30000.0, high=15000.0), "rate / 2 = 15000.0"),
        (dict(rate=0.0), "sample rate"),
        (dict(rate=30000.0, order=0), "order"),
        (dict(rate=30000.0, order=float("nan")), "order"),
        (dict(rate=1e9, low=0.5, high=1.0, order=1), "unstable|cannot design"),
        (dict(rate=30000.0, order=2.5), "order"),
        (dict(rate=30000.0, n_threads=0), "n_threads"),
        (dict(rate=30000.0, precision="float16"), "precision"),
        (dict(rate="abc"), "numbers"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(FilterError, match=match) as info:
        Filter(**kwargs)
    assert isinstance(info.value, PhyError) and isinstance(info.value, ValueError)


def test_bad_input():
    fil = Filter(RATE)
    with pytest.raises(FilterError, match="more than 21 samples"):
        fil(np.zeros((21, 3), np.float32))
    with pytest.raises(FilterError, match="shape"):
        fil(np.zeros((2, 3, 4)))
    with pytest.raises(FilterError, match="dtype"):
        fil(np.zeros((100, 2), dtype=complex))


def test_frequency_response():
    n = 30000
    t = np.arange(n) / RATE
    fil = Filter(RATE)
    sos = signal.butter(3, (500.0, 0.475 * RATE), "bandpass", fs=RATE, output="sos")
    freqs = np.array([50.0, 1000.0, 0.49 * RATE])
    _, h = signal.sosfreqz(sos, worN=freqs, fs=RATE)
    expected = np.abs(h) ** 2  # forward-backward squares the magnitude
    x = np.sin(2 * np.pi * freqs[None, :] * t[:, None]).astype(np.float32)
    y = fil(x)
    mid = slice(5000, n - 5000)  # away from the edges
    gain = np.sqrt(2) * y[mid].std(axis=0)
    assert 0.95 < gain[1] < 1.001  # 1 kHz passes (0.985: one octave above 500 Hz)
    assert gain[0] < 1e-3 and gain[2] < 0.2  # 50 Hz and 0.49 fs are attenuated...
    np.testing.assert_allclose(gain, expected, rtol=0.02)  # ...as Butterworth predicts


def test_stage_descriptor():
    (stage,) = STAGES
    assert (stage.name, stage.kind) == ("butterworth", "filter")
    params = dict(stage.parameters, rate=RATE)
    fil = stage.factory(**params)
    assert isinstance(fil, Filter) and fil.high == 0.475 * RATE and fil.order == 3


finite = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.one_of(finite, st.none(), st.text(max_size=3)),
    low=st.one_of(finite, st.integers(-10, 10**5)),
    high=st.one_of(finite, st.none()),
    order=st.one_of(st.integers(-2, 30), st.floats(), st.booleans(), st.none()),
)
def test_parameters_valid_or_clean_error(rate, low, high, order):
    """Whatever the parameters: a working filter, or a FilterError, nothing else."""
    try:
        fil = Filter(rate, low=low, high=high, order=order)
    except FilterError:
        return
    assert 0 < fil.low < fil.high < fil.rate / 2 and fil.order >= 1
    assert np.all(np.isfinite(fil.sos))


def test_workers_need_no_scipy_signal(tmp_path):
    # A worker's start-up (warm-up by stage name) and a pickled Filter it receives run
    # without importing scipy.signal, most of a worker's start-up time.
    import pickle
    import subprocess
    import sys

    filter_ = Filter(rate=30000.0, low=500.0, high=9000.0, order=3, precision="float32")
    filter_.margin_samples  # computed before pickling, as the runner does
    x = np.random.default_rng(0).normal(size=(2000, 5)).astype(np.float32)
    (tmp_path / "job.pkl").write_bytes(pickle.dumps((filter_, x, filter_(x))))
    code = f"""
import pickle, sys
import numpy as np
from phy_detect.worker import warm_up
warm_up("", {{"filter": ("butterworth", dict(rate=30000.0, low=500.0, high=9000.0, order=3,
                                              precision="float32")),
              "threshold": ("mad", dict(mode="negative")),
              "detector": ("floodfill", dict(join_size=1)),
              "extractor": ("centroid", dict(extract_before=10, extract_after=10,
                                             weight_power=2.0))}})
filter_, x, expected = pickle.loads(open({str(tmp_path / "job.pkl")!r}, "rb").read())
# (Not bit-equal: fastmath kernels may round differently in another process's specialisation.)
assert np.abs(filter_(x) - expected).max() <= 1e-5 * np.abs(expected).max()
assert filter_.margin_samples > 0
assert "scipy.signal" not in sys.modules, "scipy.signal was imported"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
