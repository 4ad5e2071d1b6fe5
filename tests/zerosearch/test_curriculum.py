"""Noise-probability curriculum: hand-computed values, endpoints, monotonicity, validation."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zerosearch.curriculum import CurriculumConfig, NoiseCurriculum, noise_probability


def test_exponential_midpoint_by_hand():
    cfg = CurriculumConfig(schedule="exponential", start_threshold=0.0, end_threshold=0.5, base=4, total_steps=10)
    # (4**0.5 - 1) / (4 - 1) * 0.5 = (2 - 1) / 3 * 0.5 = 1/6
    assert noise_probability(5, cfg) == pytest.approx(1 / 6)


def test_exponential_with_nonzero_start_by_hand():
    cfg = CurriculumConfig(start_threshold=0.25, end_threshold=0.5, base=4, total_steps=4)
    # step 2: 0.25 + (4**0.5 - 1)/3 * 0.25 = 0.25 + 0.25/3
    assert noise_probability(2, cfg) == pytest.approx(0.25 + 0.25 / 3)
    # step 1: 4**0.25 = sqrt(2); 0.25 + (sqrt(2) - 1)/3 * 0.25
    assert noise_probability(1, cfg) == pytest.approx(0.25 + (math.sqrt(2) - 1) / 3 * 0.25)


def test_base_below_one_is_concave():
    cfg = CurriculumConfig(start_threshold=0.0, end_threshold=1.0, base=0.25, total_steps=2)
    # (0.25**0.5 - 1)/(0.25 - 1) = (-0.5)/(-0.75) = 2/3: above the linear 1/2
    assert noise_probability(1, cfg) == pytest.approx(2 / 3)


def test_linear_and_constant_by_hand():
    lin = CurriculumConfig(schedule="linear", start_threshold=0.1, end_threshold=0.5, total_steps=8)
    assert noise_probability(2, lin) == pytest.approx(0.1 + 2 / 8 * 0.4)
    const = CurriculumConfig(schedule="constant", start_threshold=0.3, end_threshold=0.9, total_steps=8)
    assert [noise_probability(s, const) for s in (0, 4, 8, 100)] == [0.3, 0.3, 0.3, 0.3]


@pytest.mark.parametrize("schedule", ["exponential", "linear"])
def test_endpoints_and_beyond(schedule):
    cfg = CurriculumConfig(schedule=schedule, start_threshold=0.2, end_threshold=0.7, total_steps=50)
    assert noise_probability(0, cfg) == pytest.approx(0.2)
    assert noise_probability(50, cfg) == pytest.approx(0.7)
    assert noise_probability(51, cfg) == 0.7
    assert noise_probability(10_000, cfg) == 0.7


@pytest.mark.parametrize("schedule", ["exponential", "linear"])
@pytest.mark.parametrize("ps,pe", [(0.0, 0.5), (0.25, 0.5), (0.8, 0.1)])
def test_monotone_between_bounds(schedule, ps, pe):
    cfg = CurriculumConfig(schedule=schedule, start_threshold=ps, end_threshold=pe, total_steps=37)
    values = [noise_probability(s, cfg) for s in range(0, 45)]
    sign = 1 if pe >= ps else -1
    assert all(sign * (b - a) >= -1e-12 for a, b in zip(values, values[1:]))
    assert all(min(ps, pe) <= v <= max(ps, pe) for v in values)


def test_exponential_below_linear_for_base_above_one():
    exp = CurriculumConfig(start_threshold=0.0, end_threshold=1.0, base=4, total_steps=20)
    lin = CurriculumConfig(schedule="linear", start_threshold=0.0, end_threshold=1.0, total_steps=20)
    assert all(noise_probability(s, exp) < noise_probability(s, lin) for s in range(1, 20))


def test_callable_object_and_from_dict():
    sched = NoiseCurriculum({"start_threshold": 0.0, "end_threshold": 0.5, "base": 4, "total_steps": 10})
    assert sched(5) == pytest.approx(1 / 6)
    assert "exponential" in repr(sched)
    assert NoiseCurriculum()(0) == pytest.approx(CurriculumConfig().start_threshold)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"start_threshold": -0.1}, "curriculum.start_threshold"),
        ({"end_threshold": 1.5}, "curriculum.end_threshold"),
        ({"base": 1}, "curriculum.base"),
        ({"base": 0}, "curriculum.base"),
        ({"base": -2}, "curriculum.base"),
        ({"total_steps": 0}, "curriculum.total_steps"),
        ({"total_steps": 2.5}, "curriculum.total_steps"),
        ({"schedule": "cosine"}, "curriculum.schedule"),
        ({"start_threshold": "0.2"}, "curriculum.start_threshold"),
    ],
)
def test_bad_config_raises_naming_key(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        CurriculumConfig(**kwargs)
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        CurriculumConfig.from_dict(kwargs)


def test_base_one_is_fine_for_linear_and_unknown_key_rejected():
    assert noise_probability(1, CurriculumConfig(schedule="linear", start_threshold=0.25, base=1, total_steps=2)) \
        == pytest.approx(0.375)
    with pytest.raises(ValueError, match=r"curriculum\.start_treshold.*valid keys there:.*start_threshold"):
        CurriculumConfig.from_dict({"start_treshold": 0.1})


@pytest.mark.parametrize("step", [-1, float("nan"), float("inf"), "3", None])
def test_bad_step_raises(step):
    with pytest.raises(ValueError, match="step"):
        noise_probability(step, CurriculumConfig())


@given(
    ps=st.floats(0, 1),
    pe=st.floats(0, 1),
    base=st.floats(0.01, 100).filter(lambda b: abs(b - 1) > 1e-3),
    m=st.integers(1, 10_000),
    step=st.integers(0, 20_000),
)
def test_property_within_bounds(ps, pe, base, m, step):
    cfg = CurriculumConfig(start_threshold=ps, end_threshold=pe, base=base, total_steps=m)
    p = noise_probability(step, cfg)
    assert min(ps, pe) <= p <= max(ps, pe)
