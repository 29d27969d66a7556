"""The autoscale decision (protocol/autoscale.py), with time passed in."""

from xchanged.protocol.autoscale import DOWN, UP, Agent, Autoscaler, AutoscaleSettings

SETTINGS = AutoscaleSettings(backlog_up=5, utilization_up=80, utilization_down=20, hold=10, cooldown=100,
                             min_nodes=1)


def busy(queued=10):
    return [Agent("N1", "a", "a:1", 2, 2, queued), Agent("N2", "b", "b:1", 2, 2, 0), Agent("N3", "c", "c:1", 2, 2, 0)]


def idle():
    return [Agent("N1", "a", "a:1", 2, 0, 0), Agent("N2", "b", "b:1", 2, 1, 0), Agent("N3", "c", "c:1", 2, 0, 0)]


def test_a_condition_must_hold_for_the_hold_period_then_rests_for_the_cooldown():
    s = Autoscaler("N1", SETTINGS)
    assert s.observe(busy(), 0.0) is None
    assert s.observe(busy(), 9.9) is None
    d = s.observe(busy(), 10.0)
    assert d is not None and d.direction == UP and d.act and d.backlog == 10 and d.utilization == 100.0
    assert all(s.observe(busy(), t) is None for t in (20.0, 50.0, 109.9))
    assert s.observe(busy(), 110.0).direction == UP        # still held when the cool-down ends


def test_a_break_in_the_condition_restarts_the_hold():
    s = Autoscaler("N1", SETTINGS)
    s.observe(busy(), 0.0)
    assert s.observe(busy(queued=1), 5.0) is None          # backlog below the threshold: held no longer
    assert s.observe(busy(), 6.0) is None
    assert s.observe(busy(), 15.9) is None
    assert s.observe(busy(), 16.0) is not None


def test_only_the_lowest_healthy_serving_node_acts_but_every_node_decides():
    deciders = [Autoscaler(n, SETTINGS) for n in ("N1", "N2", "N3")]
    for s in deciders:
        s.observe(busy(), 0.0)
    decisions = [s.observe(busy(), 10.0) for s in deciders]
    assert [d.act for d in decisions] == [True, False, False]
    assert {d.leader for d in decisions} == {"N1"}
    agents = [Agent("N1", "a", "a:1", 2, 2, 10, draining=True)] + busy()[1:]
    s = Autoscaler("N2", SETTINGS)
    s.observe(agents, 0.0)
    assert s.observe(agents, 10.0).act                     # N1 drains: N2 leads


def test_scale_down_names_an_idle_node_preferring_a_draining_one_and_keeps_min_nodes():
    s = Autoscaler("N1", SETTINGS)
    s.observe(idle(), 0.0)
    d = s.observe(idle(), 10.0)
    assert d.direction == DOWN and d.remove.id == "N3"     # idle, highest id (the leader stays)
    agents = [Agent("N1", "a", "a:1", 2, 0, 0, draining=True), Agent("N2", "b", "b:1", 4, 0, 0),
              Agent("N3", "c", "c:1", 2, 0, 0)]
    s = Autoscaler("N2", SETTINGS)
    s.observe(agents, 0.0)
    assert s.observe(agents, 10.0).remove.id == "N1"      # already draining: the one to remove
    one = Autoscaler("N1", SETTINGS)
    one.observe(idle()[:1], 0.0)
    assert one.observe(idle()[:1], 20.0) is None          # min_nodes


def test_a_direction_without_a_hook_is_never_decided():
    s = Autoscaler("N1", AutoscaleSettings(hold=1, up=False))
    s.observe(busy(), 0.0)
    assert s.observe(busy(), 5.0) is None
