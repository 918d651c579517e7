import pytest

from t5forge import mixing

SIZES = {"en": 1000.0, "de": 100.0, "sw": 10.0, "yo": 1.0}


def test_temperature():
    assert mixing.temperature_rates(SIZES, 1.0) == pytest.approx(
        {k: v / 1111 for k, v in SIZES.items()}
    )
    rates = mixing.temperature_rates(SIZES)  # mT5: alpha = 0.3
    expected = {k: v**0.3 for k, v in SIZES.items()}
    total = sum(expected.values())
    assert rates == pytest.approx({k: v / total for k, v in expected.items()})
    assert rates["yo"] > 1 / 1111  # low-resource languages are up-sampled
    flat = mixing.temperature_rates(SIZES, 1e9)
    assert max(flat.values()) - min(flat.values()) < 1e-6


def test_unimax_spreads_evenly_with_epoch_cap():
    # Budget 400: yo (1) and sw (10) get their single epoch, the rest share evenly.
    alloc = mixing.unimax_allocation(SIZES, budget=400, max_epochs=1)
    assert alloc == pytest.approx({"yo": 1, "sw": 10, "de": 100, "en": 289})
    alloc = mixing.unimax_allocation(SIZES, budget=100, max_epochs=4)
    assert alloc == pytest.approx({"yo": 4, "sw": 32, "de": 32, "en": 32})
    # Budget equal to the corpus with one epoch: size-proportional.
    assert mixing.unimax_rates(SIZES, 1111) == pytest.approx(mixing.temperature_rates(SIZES, 1))
    assert sum(mixing.unimax_rates(SIZES, 50, 2).values()) == pytest.approx(1.0)


def test_bad_arguments():
    with pytest.raises(ValueError):
        mixing.temperature_rates(SIZES, 0)
    with pytest.raises(ValueError):
        mixing.unimax_rates(SIZES, 0)
    with pytest.raises(ValueError, match="empty"):
        mixing.temperature_rates({"de": 0})
