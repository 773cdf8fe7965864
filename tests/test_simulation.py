"""The simulator: real nodes on a virtual network; each scenario at small scale, determinism,
and proof that the real validators run inside the simulation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from node.wire import decode, encode_request
from records import encode_record, location
from simulations.cli import run
from simulations.clock import run_virtual
from simulations.harness import Simulation
from simulations.network import SimNetwork
from simulations.report import Timeline, timeline_figure
from simulations.scenarios.common import (
    announce,
    measure_gets,
    put_records,
    republish,
    user_identity,
)

pytestmark = pytest.mark.timeout(120)


def test_virtual_time_runs_fast_and_in_order() -> None:
    fired: list[tuple[str, float]] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(3600, lambda: fired.append(("late", loop.time())))
        loop.call_later(60, lambda: fired.append(("early", loop.time())))
        await asyncio.sleep(24 * 3600)
        return loop.time()

    assert run_virtual(main()) == pytest.approx(24 * 3600)
    assert [name for name, _ in fired] == ["early", "late"]
    assert fired[0][1] == pytest.approx(60)


def test_network_delays_losses_partitions_and_crashes() -> None:
    async def main() -> dict[str, list[float]]:
        net = SimNetwork(seed=3, loss=0.5)
        got: dict[str, list[float]] = {"b": [], "c": []}
        loop = asyncio.get_running_loop()

        class Recorder(asyncio.DatagramProtocol):
            def __init__(self, name: str) -> None:
                self.name = name

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                got[self.name].append(loop.time())

        a_host, b_host, c_host = net.new_host(), net.new_host(), net.new_host()
        a, _ = await net.create_endpoint(asyncio.DatagramProtocol, local_addr=(a_host, 0))
        b, _ = await net.create_endpoint(lambda: Recorder("b"), local_addr=(b_host, 0))
        c, _ = await net.create_endpoint(lambda: Recorder("c"), local_addr=(c_host, 0))
        for _ in range(200):
            a.sendto(b"x", b.get_extra_info("sockname"))
        await asyncio.sleep(1)
        assert 60 < len(got["b"]) < 140  # about half lost
        rtt = net.rtt(a_host, b_host)
        assert 0.010 <= rtt <= 0.300
        assert all(t >= rtt / 2 * 0.9 - 0.001 for t in got["b"])
        net.loss = 0.0
        net.partition([{a_host, b_host}, {c_host}])
        a.sendto(b"x", c.get_extra_info("sockname"))
        net.heal()
        net.crash(c_host)
        a.sendto(b"x", c.get_extra_info("sockname"))
        await asyncio.sleep(1)
        for transport in (a, b, c):
            transport.close()
        assert net.counters["dropped_partition"] == 1
        assert net.counters["dropped_down"] == 1
        return got

    assert run_virtual(main())["c"] == []


def scenario(*argv: str) -> dict[str, object]:
    return run([*argv, "--quiet"])


def test_lookup_scenario() -> None:
    result = scenario("lookup", "--nodes", "150", "--keys", "30", "--gets", "150")
    assert result["get_ok"] == 1.0
    assert result["rounds_p50"] <= 3  # type: ignore[operator]
    assert result["messages_p50"] <= 30  # type: ignore[operator]


def test_same_seed_same_result(tmp_path: Path) -> None:
    argv = ["lookup", "--nodes", "80", "--keys", "20", "--gets", "60", "--seed", "7"]
    first = scenario(*argv, "--out", str(tmp_path / "a"))
    second = scenario(*argv, "--out", str(tmp_path / "b"))
    for volatile in ("wall_s", "peak_rss_mb"):
        first.pop(volatile)
        second.pop(volatile)
    assert first == second
    a = json.loads((tmp_path / "a" / "result.json").read_text())
    b = json.loads((tmp_path / "b" / "result.json").read_text())
    assert a["metrics"] == b["metrics"]
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {
        "result.json",
        "latency_cdf.png",
        "messages_per_lookup.png",
    }
    third = scenario(*argv[:-1], "8")
    assert third["datagrams"] != first["datagrams"]


def test_mass_failure_scenario() -> None:
    result = scenario("mass-failure", "--nodes", "150", "--keys", "60", "--kill", "0.2")
    assert result["killed"] == 30
    assert result["get_ok"] == 1.0
    assert result["after_get_ok"] >= 0.98  # type: ignore[operator]


def test_churn_scenario() -> None:
    result = scenario("churn", "--nodes", "120", "--keys", "30", "--hours", "0.5")
    assert result["departures"] > 10  # type: ignore[operator]
    assert result["joins"] > 10  # type: ignore[operator]
    assert result["min_sample_ok"] >= 0.95  # type: ignore[operator]


def test_a_get_made_while_an_update_is_being_put_may_find_the_version_before() -> None:
    # churn re-announces a user when its node comes back while samples run: a get that starts
    # before the new version's put has ended can only find the old one, and must not count as
    # failed for it (a 10,000-node churn run lost a sample to that); once a put of the new
    # version has ended, only the new version counts
    async def main() -> tuple[bool, bool, bool, bool]:
        sim = Simulation(seed=4)
        await sim.grow(40)
        (item,) = await put_records(sim, 1, ttl_ms=3_600_000)
        first = item.record
        await asyncio.sleep(60)
        item.record = announce(sim, item.user, item.origin, 3_600_000)
        sim.network.crash(item.origin.host)  # its put waits on timeouts, storing nothing
        putting = asyncio.get_running_loop().create_task(republish(item))
        await asyncio.sleep(0)
        (during,) = await measure_gets(sim, [item])  # finds the first version
        still_putting = not putting.done()
        sim.network.recover(item.origin.host)
        await putting
        await republish(item)
        moved_on = item.expected is item.record and item.expected is not first
        (after,) = await measure_gets(sim, [item])
        await sim.stop_all()
        return during.ok, still_putting, moved_on, after.ok

    during, still_putting, moved_on, after = run_virtual(main())
    assert still_putting  # the first get overlapped the put
    assert during
    assert moved_on
    assert after


def test_an_update_whose_put_failed_is_still_what_gets_must_find() -> None:
    async def main() -> bool:
        sim = Simulation(seed=4)
        await sim.grow(10)
        (item,) = await put_records(sim, 1, ttl_ms=3_600_000)
        item.record = announce(sim, item.user, item.origin, 3_600_000)
        for node in sim.live():
            if node is not item.origin:
                await sim.crash(node)  # nobody left to store it: the put fails
        await republish(item)
        await sim.stop_all()
        return item.expected is item.record

    assert run_virtual(main())


def test_partition_scenario() -> None:
    result = scenario(
        "partition", "--nodes", "100", "--keys", "30", "--split", "10", "--after", "30"
    )
    assert result["during_get_ok"] >= 0.9  # type: ignore[operator]
    assert result["after_heal_newest_final"] >= 0.97  # type: ignore[operator]


def test_expiry_scenario() -> None:
    result = scenario("expiry", "--nodes", "40", "--keys", "20", "--days", "1")
    assert result["min_sample_live_ok"] == 1.0
    assert result["dead_records_stored_end"] == 0
    assert result["dead_gets_answered_after_expiry"] == 0


def test_forged_record_refused_inside_the_simulation() -> None:
    async def main() -> tuple[object, object]:
        sim = Simulation(seed=5)
        await sim.grow(30)
        user = user_identity(5, 0)
        origin, target, via = sim.nodes[3], sim.nodes[10], sim.nodes[20]
        record = announce(sim, user, origin, ttl_ms=3600_000)
        value = record.values[0]
        value.value = value.value[:-1] + bytes([value.value[-1] ^ 1])  # break the node signature
        loc = location(record.key)
        assert origin.node is not None
        assert target.node is not None
        assert via.node is not None
        assert origin.node.protocol is not None
        # send the store RPC by hand, as a malicious node would
        reply = await origin.node.protocol.store_at(
            target.address, target.identity.id, loc, encode_record(record)
        )
        got = await via.node.get(record.key)
        await sim.stop_all()
        return reply, got

    reply, got = run_virtual(main())
    assert reply == (True, [False, "bad_node_signature"])
    assert got is None


def test_wire_bytes_are_real_datagrams() -> None:
    async def main() -> tuple[bool, object]:
        sim = Simulation(seed=2)
        await sim.grow(3)
        node = sim.nodes[0].node
        assert node is not None
        assert node.protocol is not None
        answer = await node.protocol.call(sim.nodes[1].address, "ping", [node.id])
        await sim.stop_all()
        return answer

    ok, body = run_virtual(main())
    assert ok
    assert body == sim_id(1)
    assert decode(encode_request(b"\x00" * 20, "ping", [b"\x01" * 20])).body == [
        "ping",
        [b"\x01" * 20],
    ]


def sim_id(index: int) -> bytes:
    """The ID the simulation of seed 2 gives its node `index` (the same in every run)."""
    sim = Simulation(seed=2)
    return [sim.new_host() for _ in range(index + 1)][-1].identity.id


def test_adversarial_scenario_never_returns_a_forged_record() -> None:
    result = scenario(
        "adversarial", "--nodes", "120", "--keys", "20", "--gets", "60", "--malicious", "0.2"
    )
    assert result["malicious_nodes"] > 10  # type: ignore[operator]
    assert result["1path_forged_returned"] == 0
    assert result["3paths_forged_returned"] == 0
    assert result["flood_stores_throttled"] > 0  # type: ignore[operator]
    assert result["3paths_get_ok"] >= 0.8  # type: ignore[operator]

    # every get counted once, from an eclipsed honest node or from another, and the two
    # shares make up the whole
    def number(key: str) -> float:
        value = result[key]
        assert isinstance(value, int | float), key
        return value

    counts = {part: number(f"3paths_gets_from_{part}") for part in ("eclipsed", "not_eclipsed")}
    assert sum(counts.values()) == 60
    assert 0 <= number("honest_nodes_eclipsed") < 120 - number("malicious_nodes")
    assert 0 < number("honest_table_colluder_share") < 1
    made = sum(n * number(f"3paths_get_ok_from_{part}") for part, n in counts.items() if n)
    assert number("3paths_get_ok") == pytest.approx(made / 60, abs=1e-4)


def test_adversarial_updates_are_what_gets_find_when_no_one_lies() -> None:
    # with --update a get counts only the second version as found: without colluders every
    # get finds it (were the update never put, gets would find the first version and fail)
    result = scenario(
        "adversarial", "--nodes", "60", "--keys", "10", "--gets", "30", "--malicious", "0",
        "--update",
    )  # fmt: skip
    assert result["updated"] is True
    assert result["malicious_nodes"] == 0
    assert result["1path_get_ok"] == result["3paths_get_ok"] == 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lookup", "--get-lagging", "-1"], "--get-lagging must not be negative"),
        (["lookup", "--get-alpha", "0"], "--get-alpha must be at least 1"),
        (["bench-loopback", "--get-lagging", "-1"], "--get-lagging must not be negative"),
        (["bench-loopback", "--get-alpha", "0"], "--get-alpha must be at least 1"),
    ],
)
def test_get_options_out_of_range_are_refused_before_a_run(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        run(argv)


def test_node_config_refuses_gets_without_requests_or_with_negative_lagging() -> None:
    from node import NodeConfig

    with pytest.raises(ValueError, match="get_alpha must be at least 1"):
        NodeConfig(get_alpha=0)
    with pytest.raises(ValueError, match="get_lagging_paths must not be negative"):
        NodeConfig(get_lagging_paths=-1)


def test_results_record_the_node_config_and_when_things_were_done(tmp_path: Path) -> None:
    scenario(
        "partition",
        *("--nodes", "60", "--keys", "10", "--split", "5", "--after", "10"),
        *("--get-paths", "2", "--get-lagging", "0", "--get-alpha", "3"),
        *("--out", str(tmp_path / "partition")),
    )
    result = json.loads((tmp_path / "partition" / "result.json").read_text())
    node = result["config"]["node"]
    assert (node["k"], node["alpha"], node["replicas"], node["get_paths"]) == (20, 3, 5, 2)
    assert (node["get_lagging_paths"], node["get_alpha"]) == (0, 3)
    assert result["config"]["node_overrides"] == {
        "get_paths": 2,
        "get_lagging_paths": 0,
        "get_alpha": 3,
    }
    timeline = result["timeline"]
    assert timeline["events"]["split"] == 0.0
    assert 0 < timeline["events"]["heal"] < 5
    assert timeline["minutes"][0] < 0 < timeline["minutes"][1] < timeline["events"]["heal"]
    assert (tmp_path / "partition" / "success_over_time.png").stat().st_size > 0

    scenario(
        "expiry",
        *("--nodes", "20", "--keys", "6", "--days", "0.3", "--out", str(tmp_path / "expiry")),
    )
    timeline = json.loads((tmp_path / "expiry" / "result.json").read_text())["timeline"]
    assert timeline["events"] == {
        "half the users stop announcing": 0.0,
        "their records expire": 360.0,
    }
    assert {name: s["unit"] for name, s in timeline["series"].items()} == {
        "live records got": "fraction of gets",
        "copies of dead records": "held by live nodes",
    }


def test_each_timeline_series_has_its_own_labelled_axis_and_every_event_a_line() -> None:
    timeline = Timeline(
        [0.0, 10.0, 20.0],
        {"gets": ("fraction of gets", [1.0, 0.5, 1.0]), "copies": ("held", [9.0, 3.0, 0.0])},
        {"split": 5.0, "heal": 15.0},
    )
    figure = timeline_figure(timeline, "virtual minutes", "test")
    import matplotlib.pyplot as plt  # after timeline_figure chose the file-only backend

    try:
        axes = figure.get_axes()
        assert [ax.get_ylabel() for ax in axes] == ["gets\n(fraction of gets)", "copies\n(held)"]
        for ax in axes:
            vertical = [
                line.get_xdata()[0] for line in ax.get_lines() if len(set(line.get_xdata())) == 1
            ]
            assert vertical == [5.0, 15.0]
        legend = axes[0].get_legend()
        assert [text.get_text() for text in legend.get_texts()] == ["split", "heal"]
        assert axes[-1].get_xlabel() == "virtual minutes"
    finally:
        plt.close(figure)
