"""Input drift statistics against independent references, multiple testing, and MNIST."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.data import load_mnist5k
from bastion.guard.monitors import (
    Calibration,
    Correction,
    KSDrift,
    MMDDrift,
    PSIDrift,
    ks_drift,
    mmd2,
    psi,
)
from bastion.guard.monitors._stats import (
    adjust_p_values,
    bin_index_counts,
    bin_index_proportions,
    float32_edges,
    ks_distances,
    ks_p_values,
    psi_bin_indices,
)


@pytest.mark.parametrize("ties", [False, True])
def test_ks_distances_and_p_values_match_scipy(ties: bool) -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(300, 6, generator=g)
    x = torch.randn(80, 6, generator=g) * 1.2 + 0.2
    if ties:  # pixel-like data: many exact zeros and repeated values
        ref, x = (ref.clamp_min(0) * 4).round() / 4, (x.clamp_min(0) * 4).round() / 4
    d = ks_distances(torch.sort(ref.t().contiguous(), dim=1).values, x)
    p = ks_p_values(d, 300, 80)
    for j in range(6):
        ref_j = stats.ks_2samp(ref[:, j].numpy(), x[:, j].numpy(), method="asymp")
        assert float(d[j]) == pytest.approx(ref_j.statistic, abs=1e-12)
        assert p[j] == pytest.approx(ref_j.pvalue, abs=0.02)


def test_corrections_match_their_definitions() -> None:
    p = np.random.default_rng(0).uniform(size=50) ** 3
    np.testing.assert_allclose(
        adjust_p_values(p, Correction.BENJAMINI_HOCHBERG), stats.false_discovery_control(p)
    )
    np.testing.assert_allclose(adjust_p_values(p, Correction.BONFERRONI), np.minimum(p * 50, 1))
    np.testing.assert_array_equal(adjust_p_values(p, Correction.NONE), p)
    assert Correction.from_str("BH") is Correction.BENJAMINI_HOCHBERG
    with pytest.raises(ValueError, match="unknown correction"):
        Correction.from_str("holm")


def test_multiple_testing_correction_keeps_784_features_quiet() -> None:
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(500, 784, generator=g)
    windows = [torch.randn(100, 784, generator=g) for _ in range(60)]
    rate = {
        c: np.mean([ks_drift(ref, w, correction=c).p_value < 0.05 for w in windows])
        for c in Correction
    }
    assert rate[Correction.NONE] > 0.95  # 784 raw tests at 0.05: some feature always "drifts"
    assert rate[Correction.BONFERRONI] <= 0.1
    assert rate[Correction.BENJAMINI_HOCHBERG] <= 0.1
    shifted = ks_drift(ref, windows[0] + 0.3)  # the corrected test still sees a real shift
    assert shifted.p_value < 1e-3 and shifted.detail["features_drifted"] > 300


def test_functional_and_class_forms_agree() -> None:
    g = torch.Generator().manual_seed(4)
    ref, x = torch.randn(1000, 5, generator=g), torch.randn(100, 5, generator=g) + 0.2
    cal = Calibration(window=50, n_windows=40)
    part = ref[cal.split(1000)[0]]

    ks = KSDrift(calibration=cal).fit(ref)
    assert float(ks.score(x)) == pytest.approx(ks_drift(part, x).statistic, rel=1e-12)
    assert torch.equal(ks.reference, torch.sort(part, dim=0).values)

    ps = PSIDrift(calibration=cal).fit(ref)
    assert float(ps.score(x)) == pytest.approx(float(psi(part, x).mean()), rel=1e-12)

    mm = MMDDrift(dim=3, calibration=cal).fit(ref)
    kept = part[: mm.max_reference]  # the MMD monitor keeps the first max_reference samples
    expected = mmd2(mm.project(kept), mm.project(x), bandwidth=mm.bandwidth)
    assert float(mm.score(x)) == pytest.approx(float(expected), rel=1e-5)


def test_psi_rules_of_thumb() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(5000, 1, generator=g)
    assert float(psi(ref, torch.randn(5000, 1, generator=g))) < 0.02
    assert float(psi(ref, torch.randn(5000, 1, generator=g) + 1)) > 0.25


def test_mnist_clean_windows_quiet_and_shifted_windows_fire() -> None:
    data = load_mnist5k()
    g = torch.Generator().manual_seed(0)
    test = data.x_test[torch.randperm(1000, generator=g)]  # the split is ordered by class
    cal = Calibration(window=100, n_windows=40, test_every=100)
    monitors = [
        KSDrift(max_reference=500, calibration=cal),
        PSIDrift(calibration=cal),
        MMDDrift(calibration=cal),
    ]
    for mon in monitors:
        mon.fit(data.x_train)
        clean = [mon.update(test[i : i + 100]).alarm for i in range(0, 1000, 100)]
        brighter = [
            mon.update((test[i : i + 100] + 0.1).clamp(0, 1)).alarm for i in range(0, 500, 100)
        ]
        assert sum(clean) <= 3, mon.name
        assert all(brighter), mon.name


def test_update_schedule_and_errors() -> None:
    g = torch.Generator().manual_seed(0)
    mon = KSDrift(calibration=Calibration(window=20, n_windows=20, test_every=10))
    with pytest.raises(ConfigurationError, match="call fit"):
        mon.update(torch.randn(5, 3))
    with pytest.raises(InputValidationError, match="too small"):
        mon.fit(torch.randn(30, 3, generator=g))
    mon.fit(torch.randn(200, 3, generator=g))
    first = mon.update(torch.randn(15, 3, generator=g))
    assert not first.evaluated and first.detail["window_fill"] == 15
    assert mon.update(torch.randn(5, 3, generator=g)).evaluated  # full, 20 >= 10 pending
    stale = mon.update(torch.randn(5, 3, generator=g))
    assert not stale.evaluated and stale.samples_seen == 25
    assert mon.update(torch.randn(5, 3, generator=g)).evaluated
    with pytest.raises(InputValidationError, match="3"):
        mon.update(torch.randn(5, 4))
    with pytest.raises(InputValidationError, match="non-finite") as err:
        mon.update(torch.tensor([[0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0]]))
    assert err.value.sample_index == 1
    with pytest.raises(ConfigurationError, match="false_alarm_rate"):
        Calibration(false_alarm_rate=1.5)
    mon.reset()
    assert mon.samples_seen == 0 and mon.last_result is None


def test_concurrent_updates_keep_the_window_consistent() -> None:
    # KS keeps raw values in its window (PSI keeps bin indices), so batches stay recognisable
    mon = KSDrift(calibration=Calibration(window=64, n_windows=20, test_every=1))
    mon.fit(torch.randn(400, 3, generator=torch.Generator().manual_seed(0)))
    batches = [torch.full((8, 3), float(i)) for i in range(40)]

    def feed(part: list[torch.Tensor]) -> None:
        for b in part:
            mon.update(b)

    threads = [threading.Thread(target=feed, args=(batches[t::4],)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert mon.samples_seen == 320
    values = mon._window.values() if mon._window is not None else torch.empty(0)
    counts = torch.unique(values[:, 0], return_counts=True)[1]
    assert values.shape == (64, 3) and bool((counts == 8).all())  # whole batches, never torn


def test_psi_running_window_counts_equal_a_fresh_count() -> None:
    """The streaming PSI reads its window's bin counts from running sums (rows in, rows
    overwritten out); after pushes smaller and larger than the window, wrapping or not, every
    tested statistic equals counting the window's indices afresh."""
    g = torch.Generator().manual_seed(3)
    mon = PSIDrift(calibration=Calibration(window=50, n_windows=20, test_every=1))
    mon.fit(torch.randn(400, 6, generator=g))
    for size in (7, 30, 13, 1, 49, 50, 120, 3, 64, 2, 50, 17):
        mon.update(torch.randn(size, 6, generator=g) * 1.3)
        assert mon._window is not None
        fresh = bin_index_proportions(mon._window.values(), mon.n_bins)
        assert torch.equal(mon._counts.to(torch.float64) / mon._window.count, fresh), size
        if mon._window.full:
            assert mon.last_result is not None and mon.last_result.evaluated
            assert mon.last_result.statistic == mon._test(mon._window.values()).statistic
    mon.reset()
    assert int(mon._counts.sum()) == 0


@settings(max_examples=200, deadline=None)
@given(
    bases=st.lists(st.floats(-2.0**100, 2.0**100, width=32), min_size=1, max_size=12),
    fractions=st.lists(st.sampled_from([-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75]),
                       min_size=12, max_size=12),
)
def test_float32_values_get_the_bins_of_their_float64_values(
    bases: list[float], fractions: list[float]
) -> None:
    """Edges that fall between two float32 numbers (a quarter, half or three quarters of an
    ulp off one), values on and either side of each: binning the float32 values against
    :func:`float32_edges` gives the bins of binning them widened to float64 against the edges."""
    base = np.array(sorted(bases), dtype=np.float32)
    ulp = np.spacing(np.abs(base)).astype(np.float64)
    edges64 = np.sort(base.astype(np.float64) + np.array(fractions[: len(base)]) * ulp)
    values = np.concatenate([base, np.nextafter(base, np.float32(np.inf)),
                             np.nextafter(base, np.float32(-np.inf))]).astype(np.float32)
    edges = torch.from_numpy(np.stack([edges64, edges64]))  # two features, same edges
    x = torch.from_numpy(np.stack([values, values[::-1].copy()], axis=1))  # (m, 2) float32
    fast = psi_bin_indices(edges, x, float32_edges(edges))
    assert torch.equal(fast, psi_bin_indices(edges, x.double()))


def test_bin_counts_of_int32_and_int64_indices_agree() -> None:
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, 7, (300, 40), generator=g, dtype=torch.int32)
    counts = bin_index_counts(idx, 7)
    assert torch.equal(counts, bin_index_counts(idx.long(), 7))
    for j in (0, 17, 39):  # against counting one feature by hand
        assert counts[j].tolist() == [int((idx[:, j] == b).sum()) for b in range(7)]


def test_psi_monitor_gives_float32_and_float64_inputs_the_same_verdicts() -> None:
    """The monitor bins float32 traffic against float32 edges: every statistic equals the one
    for the same values sent as float64 (which are binned against the float64 edges)."""
    g = torch.Generator().manual_seed(8)
    ref = torch.randn(400, 5, generator=g, dtype=torch.float64)
    stream = (torch.randn(300, 5, generator=g) * 1.2).float()
    cal = Calibration(window=50, n_windows=20, test_every=1)
    mons = [PSIDrift(calibration=cal).fit(ref) for _ in range(2)]
    for i in range(0, 300, 25):
        a = mons[0].update(stream[i : i + 25])
        b = mons[1].update(stream[i : i + 25].double())
        assert a.statistic == b.statistic or (math.isnan(a.statistic) and math.isnan(b.statistic))
    assert mons[0].last_result is not None and mons[0].last_result.evaluated


def test_psi_float32_edges_follow_the_edges_they_came_from() -> None:
    """The float32 edges are derived from ``edges``, never kept apart from them: edges set
    afresh (a refit, or by hand) bin the next batch, not the first ones seen."""
    g = torch.Generator().manual_seed(9)
    mon = PSIDrift(calibration=Calibration(window=50, n_windows=20)).fit(
        torch.randn(400, 4, generator=g, dtype=torch.float64))
    x = torch.randn(30, 4, generator=g)
    assert torch.equal(mon._features(x), psi_bin_indices(mon.edges, x.double()))
    mon.edges = mon.edges + 0.5
    assert torch.equal(mon._features(x), psi_bin_indices(mon.edges, x.double()))
    mon.fit(torch.randn(400, 4, generator=g, dtype=torch.float64) * 3)
    assert torch.equal(mon._features(x), psi_bin_indices(mon.edges, x.double()))


def test_mmd_running_kernel_sums_equal_a_fresh_computation() -> None:
    """The streaming MMD keeps its window's kernel sums as rows enter (rows and columns of the
    window's kernel matrix rewritten); after pushes smaller and larger than the window, wrapping
    or not, every tested statistic equals computing the window's MMD afresh."""
    g = torch.Generator().manual_seed(5)
    mon = MMDDrift(dim=3, calibration=Calibration(window=40, n_windows=20, test_every=1))
    mon.fit(torch.randn(300, 10, generator=g, dtype=torch.float64))
    tested = 0
    for size in (7, 30, 13, 1, 39, 40, 100, 3, 41, 2, 40, 17):
        shift = 0.3 if size % 2 else 0.0
        mon.update(torch.randn(size, 10, generator=g, dtype=torch.float64) + shift)
        assert mon._window is not None
        if mon._window.full:
            fresh = mon._test(mon._window.values()).statistic
            assert mon.last_result is not None and mon.last_result.evaluated
            assert mon.last_result.statistic == pytest.approx(fresh, rel=1e-9, abs=1e-12), size
            tested += 1
    assert tested >= 9
    mon.reset()
    assert float(mon._kyy.abs().sum()) == 0.0


@pytest.mark.parametrize("fraction", [None, 0.4])
def test_psi_calibration_shortcut_equals_the_base_draws(fraction: float | None) -> None:
    """PSI counts a calibration draw's pseudo-reference as the whole minus the rest: the same
    draws and counts as the base's generic loop, so exactly the same null statistics."""
    from bastion.guard.monitors._base import Monitor

    g = torch.Generator().manual_seed(8)
    cal = Calibration(window=30, n_windows=25, reference_fraction=fraction)
    mon = PSIDrift(calibration=cal).fit(torch.randn(120, 4, generator=g))
    feats = mon._features(torch.randn(120, 4, generator=g))
    n_stats = cal.split(120)[0].numel()
    fast = mon._null_statistics(feats, n_stats)
    generic = Monitor._null_statistics(mon, feats, n_stats)
    assert torch.equal(fast, generic)


@pytest.mark.parametrize(
    ("name", "member"),
    [("bonferroni", Correction.BONFERRONI), ("BH", Correction.BENJAMINI_HOCHBERG),
     ("benjamini-hochberg", Correction.BENJAMINI_HOCHBERG), ("none", Correction.NONE)],
)
def test_a_correction_by_name_is_the_correction(name: str, member: Correction) -> None:
    """The name is parsed at construction: same member, same threshold, same verdicts (a
    string used to fall through to Benjamini-Hochberg, then fail on ``.value``)."""
    g = torch.Generator().manual_seed(11)
    ref, x = torch.randn(300, 20, generator=g), torch.randn(30, 20, generator=g) + 0.3
    cal = Calibration(window=30, n_windows=20)
    by_name, by_member = (KSDrift(correction=c, calibration=cal).fit(ref) for c in (name, member))
    assert by_name.correction is member
    assert by_name.threshold == by_member.threshold
    assert by_name.update(x).to_dict() == by_member.update(x).to_dict()
    assert ks_drift(ref, x, correction=name) == ks_drift(ref, x, correction=member)


@pytest.mark.parametrize("bad", ["holm", "", None, 5, Correction])
def test_an_unknown_correction_is_refused_naming_the_choices(bad: object) -> None:
    for make in (lambda: KSDrift(correction=bad),  # type: ignore[arg-type]
                 lambda: ks_drift(torch.zeros(5, 1), torch.zeros(5, 1), correction=bad),  # type: ignore[arg-type]
                 lambda: Correction.from_str(bad)):  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="use one of none, bonferroni, bh"):
            make()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: KSDrift(max_reference=1), "max_reference must be an integer >= 2, got 1"),
        (lambda: KSDrift(max_reference=2.5), "max_reference must be an integer >= 2, got 2.5"),
        (lambda: KSDrift(max_reference=True), "max_reference must be an integer >= 2, got True"),
        (lambda: KSDrift(max_reference="500"), "max_reference must be an integer"),
        (lambda: PSIDrift(n_bins=1), r"n_bins must be an integer in 2\.\.1000, got 1"),
        (lambda: PSIDrift(n_bins=2.5), r"n_bins must be an integer in 2\.\.1000, got 2\.5"),
        (lambda: PSIDrift(n_bins=10**6), r"n_bins must be an integer in 2\.\.1000"),
        (lambda: PSIDrift(n_bins=None), "n_bins must be an integer"),
        (lambda: psi(torch.zeros(5, 1), torch.zeros(5, 1), n_bins=0), "n_bins must be"),
    ],
)
def test_drift_monitor_numbers_are_checked_at_construction(
    make: Callable[[], object], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        make()


def test_numpy_integers_are_accepted_as_the_integers_they_are() -> None:
    mon = PSIDrift(n_bins=np.int64(7), calibration=Calibration(window=np.int32(30), n_windows=20))
    assert type(mon.n_bins) is int and type(mon.calibration.window) is int
    assert mon.n_bins == 7 and mon.calibration.window == 30
