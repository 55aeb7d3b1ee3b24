"""ThreadWatch on scripted step times: one thread first, two while two are faster, back to one when they are
slower, two again after `retry_every` steps."""

import pytest
import torch

from nanolm.train.threads import ThreadWatch


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run(watch, first, last, seconds):
    for step in range(first, last + 1):
        watch.after_step(step, seconds[torch.get_num_threads()])


def test_switches_follow_the_measured_speed():
    lines = []
    watch = ThreadWatch(100, threads=2, retry_every=1000, window=50, print_fn=lines.append)
    assert torch.get_num_threads() == 1
    run(watch, 1, 50, {1: 0.01, 2: 0.02})  # 50 steps on one thread, then two are tried
    assert watch.log == [(50, 2)] and torch.get_num_threads() == 2
    run(watch, 51, 60, {1: 0.01, 2: 0.02})  # two threads at half the speed: back to one after 10 steps
    assert watch.log == [(50, 2), (60, 1)] and torch.get_num_threads() == 1
    assert "slower than one thread (10.0k)" in lines[0]
    run(watch, 61, 1059, {1: 0.01, 2: 0.005})  # on one thread until retry_every steps have passed
    assert watch.log[-1] == (60, 1)
    run(watch, 1060, 1200, {1: 0.01, 2: 0.005})  # tried again at step 1060; now faster, so it stays
    assert watch.log == [(50, 2), (60, 1), (1060, 2)] and torch.get_num_threads() == 2
    assert len(lines) == 2


def test_needs_more_than_one_thread():
    with pytest.raises(ValueError, match="threads=1"):
        ThreadWatch(100, threads=1)
