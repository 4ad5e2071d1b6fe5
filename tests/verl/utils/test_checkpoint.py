"""Checkpoint cadence: every save_freq steps or every save_interval_minutes, whichever is rarer."""

from verl.utils.checkpoint import save_due


def test_save_freq_alone():
    assert [s for s in range(1, 8) if save_due(s, s == 7, 3, 0.0, 0.0)] == [3, 6, 7]
    assert [s for s in range(1, 5) if save_due(s, s == 4, 1, 0.0, 0.0)] == [1, 2, 3, 4]
    assert not any(save_due(s, s == 4, -1, 0.0, 1e9) for s in range(1, 5))  # -1: never, not even the last


def test_time_condition_makes_saves_rarer():
    # steps of 4 minutes, save_freq 1, at least 10 minutes between saves: steps 3, 6 and the last one save
    saved, since = [], 0.0
    for step in range(1, 8):
        since += 240.0
        if save_due(step, step == 7, 1, 10.0, since):
            saved.append(step)
            since = 0.0
    assert saved == [3, 6, 7]
    # with save_freq 4 the time condition only ever removes saves
    assert not save_due(4, False, 4, 10.0, 599.0) and save_due(4, False, 4, 10.0, 600.0)
    assert not save_due(3, False, 4, 10.0, 1e9)
