"""A repeating error is logged at once, then at most once per interval with a count of what happened."""

import logging

from xchanged.runtime.ratelimit import RateLimitedLog

log = logging.getLogger("test.ratelimit")


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == log.name]


def test_first_hit_is_logged_then_counted_until_the_interval_passes(caplog):
    caplog.set_level(logging.ERROR, logger=log.name)
    limited = RateLimitedLog(log, logging.ERROR, "input queue full", every=5.0)
    limited.hit("FrameReceived", 100.0)
    assert lines(caplog) == ["input queue full; dropped 1 since the last report (FrameReceived 1)"]
    for i in range(10_000):
        limited.hit("FrameReceived" if i % 2 else "TaskExited", 100.0 + i * 0.0001)
    assert len(lines(caplog)) == 1                      # a flood within the interval: no new line
    limited.flush(104.9)
    assert len(lines(caplog)) == 1
    limited.flush(105.0)
    assert lines(caplog)[1] == ("input queue full; dropped 10000 since the last report "
                                "(TaskExited 5000, FrameReceived 5000)")
    limited.flush(200.0)                                 # nothing dropped since: nothing to say
    assert len(lines(caplog)) == 2
    limited.hit("ResourcesRead", 200.0)
    assert lines(caplog)[2] == "input queue full; dropped 1 since the last report (ResourcesRead 1)"
