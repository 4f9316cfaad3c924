"""Token-aware routing (client/routing.py): the decision is a pure function of the ring, the
key and the endpoints the client has, checked here against the nodes' own ring code."""

from __future__ import annotations

from kvstore._proto import admin_pb2
from kvstore.client.routing import RingView, route
from kvstore.core.ring import Ring

VNODES = 16
NODES = [f"n{i}" for i in range(1, 6)]
ADDR = {n: f"127.0.0.1:70{i:02d}" for i, n in enumerate(NODES, 1)}
KEYS = [f"key-{i}".encode() for i in range(300)]


def info(nodes=NODES, *, status=None, ownership=None, rf=3, vnodes=VNODES,
         node_id="n1") -> admin_pb2.NodeInfo:
    """A NodeInfo as a node reports it: ownership from the node's own ring."""
    status = status or {}
    on_ring = [n for n in nodes if status.get(n, "NORMAL") in ("NORMAL", "LEAVING")]
    shares = Ring.of_nodes(on_ring, vnodes).ownership()
    shares.update(ownership or {})
    return admin_pb2.NodeInfo(
        node_id=node_id, replication_factor=rf, vnodes=vnodes,
        members=[admin_pb2.Member(id=n, address=ADDR[n], status=status.get(n, "NORMAL"),
                                  up=True, ownership=round(shares.get(n, 0.0), 6))
                 for n in nodes])


def test_the_view_gives_the_preference_list_the_nodes_compute():
    view = RingView.from_info(info())
    node_ring = Ring.of_nodes(NODES, VNODES)  # what a node's membership builds
    for key in KEYS:
        assert view.replicas(key) == [ADDR[n] for n in node_ring.preference_list(key, 3)]


def test_a_key_goes_first_to_its_first_replica_then_the_other_replicas_then_the_rest():
    view = RingView.from_info(info())
    order = [ADDR[n] for n in NODES]
    for key in KEYS:
        replicas = view.replicas(key)
        got, leading = route(view, key, order)
        assert leading == 3
        assert got[:3] == replicas
        assert got[3:] == [a for a in order if a not in replicas]  # usual order kept


def test_only_endpoints_the_client_has_are_chosen():
    view = RingView.from_info(info())
    known = [ADDR["n1"], ADDR["n2"]]  # the client was given two of five nodes
    routed = unrouted = 0
    for key in KEYS:
        replicas = view.replicas(key)
        got, leading = route(view, key, known)
        assert sorted(got) == sorted(known)  # never an endpoint it was not given
        mine = [a for a in replicas if a in known]
        assert got[:leading] == mine
        if mine:
            routed += 1
        else:
            assert got == known  # no replica reachable: the usual order, unchanged
            unrouted += 1
    assert routed and unrouted  # with 2 of 5 nodes, both cases occur among 300 keys


def test_endpoints_that_refused_go_after_the_reachable_ones():
    view = RingView.from_info(info())
    order = [ADDR[n] for n in NODES]
    for key in KEYS[:50]:
        replicas = view.replicas(key)
        got, leading = route(view, key, order, down={replicas[0]})
        assert got[:leading] == replicas[1:]
        assert leading == 2
        assert replicas[0] in got[leading:]  # still tried, as a last resort
        # every replica down: nothing leads, the usual order (which puts down ones last)
        assert route(view, key, order, down=set(replicas)) == (order, 0)


def test_no_view_means_the_usual_order():
    order = [ADDR[n] for n in NODES]
    assert route(None, b"k", order) == (order, 0)


def test_endpoints_named_otherwise_than_the_advertised_addresses_are_not_routed():
    view = RingView.from_info(info())
    order = ["localhost:7001", "localhost:7002"]  # e.g. a docker port mapping
    assert route(view, b"k", order) == (order, 0)


def test_endpoints_identified_by_the_node_that_answered_are_routed_whatever_their_name():
    # the client's endpoints reach n1 and n2 under other names (a client port apart from
    # the gossiped peer port, or a port mapping): their Info said which node answered
    mapped = {"n1": "localhost:17001", "n2": "localhost:17002"}
    view = RingView.from_info(info(), mapped)
    order = ["localhost:17001", "localhost:17002"]
    seen = set()
    for key in KEYS:
        pref = Ring.of_nodes(NODES, VNODES).preference_list(key, 3)
        got, leading = route(view, key, order)
        assert got[:leading] == [mapped[n] for n in pref if n in mapped]
        seen.add(leading)
    assert seen == {0, 1, 2}


def test_only_members_on_the_ring_own_keys():
    status = {"n4": "JOINING", "n5": "LEFT"}
    view = RingView.from_info(info(status=status))
    for key in KEYS:
        replicas = view.replicas(key)
        assert ADDR["n4"] not in replicas and ADDR["n5"] not in replicas
        assert len(replicas) == 3
    leaving = RingView.from_info(info(status={"n2": "LEAVING"}))
    assert any(ADDR["n2"] in leaving.replicas(k) for k in KEYS)  # still owns until LEFT


def test_a_ring_that_disagrees_with_the_nodes_ownership_is_not_used():
    # e.g. n5 replaced another node and holds that node's tokens: the ring rebuilt from
    # ids would route wrongly, and the reported ownership shows it
    assert RingView.from_info(info(ownership={"n5": 0.5})) is None
    assert RingView.from_info(info([])) is None
    assert RingView.from_info(info(vnodes=0)) is None


def test_a_view_from_a_larger_n_lists_that_many_replicas():
    view = RingView.from_info(info(rf=5))
    for key in KEYS[:20]:
        assert sorted(view.replicas(key)) == sorted(ADDR.values())
