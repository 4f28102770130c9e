"""Replicas on a real etcd: server processes sharing one etcd and prefix."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import time
import urllib.error
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from discovery.etcd.membership import score
from discovery.testing import ServerProcess, eventually
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.etcd_support import Cutter, Etcd, compact, free_port, running_etcd
from tests.instances import fake_instances
from tests.metrics_helpers import counted
from tests.replicas import (
    GrpcWatch,
    SseWatch,
    grpc_ids,
    instance_ids,
    replica_env,
    replica_id,
    replicas,
)

pytestmark = pytest.mark.timeout(120)


def body(instance: str, port: int = 8080, endpoint: str | None = None) -> dict[str, object]:
    return {
        "service_name": "game",
        "instance_id": instance,
        "host": "127.0.0.1",
        "port": port,
        "health_endpoint": endpoint,
    }


async def register(client: httpx.AsyncClient, url: str, instance: str) -> None:
    answer = await client.post(f"{url}/v1/discovery/register", json=body(instance))
    assert answer.status_code == 200, answer.text


@pytest.fixture
async def etcd() -> AsyncIterator[Etcd]:
    async with running_etcd() as running:
        yield running


async def test_a_write_on_one_replica_shows_on_the_others_within_a_second(etcd: Etcd) -> None:
    async with (
        replicas(3, replica_env(etcd)) as (a, b, c),
        httpx.AsyncClient(timeout=10) as client,
    ):
        watch = GrpcWatch(b.grpc_target, services=("game",))
        sse = SseWatch(client, c.rest_url, service="game")
        await eventually(lambda: watch.synced and sse.synced, within=10)
        answer = await client.post(f"{a.rest_url}/v1/discovery/register", json=body("g-1"))
        assert answer.status_code == 200
        acked = time.monotonic()

        async def everywhere() -> bool:
            rest = [await instance_ids(client, p.rest_url, "game") for p in (b, c)]
            return rest == [["g-1"]] * 2 and await grpc_ids(c.grpc_target, "game") == ["g-1"]

        await eventually(everywhere, within=1.0)
        await eventually(lambda: watch.events() != [] and sse.puts() != [], within=1.0)
        assert time.monotonic() - acked < 1.0
        (kind, instance, revision), *_ = watch.events()
        # Revisions are etcd's: the same change has the same revision on every replica.
        assert (kind, instance) == ("PUT", "g-1")
        assert sse.puts() == [("g-1", revision)]

        # An unregistration on another replica, and the same on the first.
        assert (await client.delete(f"{c.rest_url}/v1/discovery/unregister/game/g-1")).is_success
        await eventually(lambda: [e[0] for e in watch.events()] == ["PUT", "DELETE"], within=1.0)
        assert await instance_ids(client, a.rest_url, "game") == []
        await watch.close()
        await sse.close()


async def test_a_watch_resumes_on_another_replica_after_sigkill_and_misses_nothing(
    etcd: Etcd,
) -> None:
    async with (
        replicas(3, replica_env(etcd)) as (a, b, c),
        httpx.AsyncClient(timeout=10) as client,
    ):
        watch = GrpcWatch(a.grpc_target, services=("game",))
        await eventually(lambda: watch.synced, within=10)
        for n in range(5):
            url = (a, b, c)[n % 3].rest_url
            assert (
                await client.post(f"{url}/v1/discovery/register", json=body(f"g-{n}"))
            ).is_success
        await eventually(lambda: len(watch.events()) == 5, within=2)
        seen = watch.revision
        await a.kill()
        # Written while the watcher is away.
        for n in range(5, 8):
            assert (
                await client.post(f"{b.rest_url}/v1/discovery/register", json=body(f"g-{n}"))
            ).is_success
        assert (await client.delete(f"{c.rest_url}/v1/discovery/unregister/game/g-0")).is_success

        resumed = GrpcWatch(c.grpc_target, start_revision=seen, services=("game",))
        await eventually(lambda: len(resumed.events()) == 4, within=2)
        assert not any(m.reset for m in resumed.messages)
        events = resumed.events()
        assert [(k, i) for k, i, _ in events] == [
            ("PUT", "g-5"),
            ("PUT", "g-6"),
            ("PUT", "g-7"),
            ("DELETE", "g-0"),
        ]
        assert all(r > seen for _, _, r in events)
        assert [r for *_, r in events] == sorted(r for *_, r in events)
        await watch.close()
        await resumed.close()


async def test_expiry_happens_once_whichever_replica_got_the_heartbeats(etcd: Etcd) -> None:
    env = replica_env(
        etcd, SERVICE_REGISTRATION_TTL_SECONDS="2", SERVICE_HEARTBEAT_INTERVAL_SECONDS="30"
    )
    async with replicas(3, env) as processes, httpx.AsyncClient(timeout=10) as client:
        watch = GrpcWatch(processes[0].grpc_target, services=("game",))
        await eventually(lambda: watch.synced, within=10)
        url = processes[0].rest_url
        await register(client, url, "g-1")
        # Heartbeats spread over the replicas for two TTLs and more: it must never expire.
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < 4.5:
            target = processes[n % 3].rest_url
            beat = {"service_name": "game", "instance_id": "g-1"}
            answer = await client.post(f"{target}/v1/discovery/heartbeat", json=beat)
            assert answer.status_code == 200, answer.text
            n += 1
            await asyncio.sleep(0.4)
        assert [e[0] for e in watch.events()] == ["PUT"]
        # Silence: expired once, for every replica.
        await eventually(lambda: [e[0] for e in watch.events()] == ["PUT", "DELETE"], within=5)
        for process in processes:
            assert await instance_ids(client, process.rest_url, "game") == []
        await asyncio.sleep(0.5)  # a second expiry would show as a second DELETE by now
        assert [e[0] for e in watch.events()] == ["PUT", "DELETE"]
        expired = [p for p in processes if "expired" in p.output]
        assert len(expired) == 1
        counts = []
        for process in processes:
            async with httpx.AsyncClient(base_url=process.rest_url) as scraper:
                counts.append(await counted(scraper, "discovery_expirations_total", reason="ttl"))
        assert sorted(counts) == [0, 0, 1], counts  # counted once, by the replica that expired it
        await watch.close()


async def test_each_instance_is_probed_by_one_replica_and_moves_when_it_dies(
    etcd: Etcd,
) -> None:
    interval = 0.5
    env = replica_env(etcd, HEALTH_CHECK_INTERVAL_SECONDS=str(interval))
    async with (
        fake_instances() as fleet,
        replicas(3, env) as processes,
        httpx.AsyncClient(timeout=10) as client,
    ):
        paths = [f"/health/{n}" for n in range(9)]
        for path in paths:
            fleet.answer(path, 200, {"status": "UP"})
            registration = body(path.rsplit("/", 1)[1], fleet.port, path)
            answer = await client.post(
                f"{processes[0].rest_url}/v1/discovery/register", json=registration
            )
            assert answer.is_success
        await asyncio.sleep(1.0)
        window = 2.0
        before = {p: fleet.count(p) for p in paths}
        await asyncio.sleep(window)
        counts = {p: fleet.count(p) - before[p] for p in paths}
        expected = window / interval
        # One replica probes each instance: about one probe per interval, not three.
        assert all(expected * 0.5 <= n <= expected * 1.5 for n in counts.values()), counts

        ids = [replica_id(p) for p in processes]
        victim = processes[0]
        owned = [
            path
            for path in paths
            if max(ids, key=lambda r: score(r, ("game", path.rsplit("/", 1)[1]))) == ids[0]
        ]
        await victim.kill()
        killed = time.monotonic()
        # Its probes move to the others within the replica TTL (2 s), plus a probe's time.
        marks = {p: fleet.count(p) for p in owned}

        def moved() -> bool:
            return all(fleet.count(p) > marks[p] for p in owned)

        await eventually(moved, within=4.0)
        assert time.monotonic() - killed < 3.5
        # Still one prober each afterwards.
        await asyncio.sleep(0.5)
        before = {p: fleet.count(p) for p in paths}
        await asyncio.sleep(window)
        counts = {p: fleet.count(p) - before[p] for p in paths}
        assert all(expected * 0.5 <= n <= expected * 1.5 for n in counts.values()), counts


async def test_each_alert_reaches_the_webhook_once(etcd: Etcd) -> None:
    async with fake_instances() as hook:
        hook.answer("/hook", 200, {"ok": True})
        env = replica_env(etcd, ALERT_WEBHOOK_URL=f"http://127.0.0.1:{hook.port}/hook")
        async with replicas(3, env) as processes, httpx.AsyncClient(timeout=10) as client:
            url = processes[1].rest_url
            await register(client, url, "g-1")
            await eventually(lambda: _has(client, processes[2].rest_url, {"g-1"}), within=1)
            beat = {"service_name": "game", "instance_id": "g-1", "load_percentage": 0.95}
            assert (
                await client.post(f"{processes[2].rest_url}/v1/discovery/heartbeat", json=beat)
            ).is_success

            async def alerted_everywhere() -> bool:
                for process in processes:
                    alerts = (await client.get(f"{process.rest_url}/v1/discovery/alerts")).json()
                    if [a["instance_id"] for a in alerts["alerts"]] != ["g-1"]:
                        return False
                return True

            await eventually(alerted_everywhere, within=1.0)
            await eventually(lambda: len(hook.posts) == 1, within=3)
            beat["load_percentage"] = 0.1
            assert (
                await client.post(f"{processes[0].rest_url}/v1/discovery/heartbeat", json=beat)
            ).is_success
            await eventually(lambda: len(hook.posts) == 2, within=3)
            await asyncio.sleep(1.0)  # a duplicate would have arrived by now
            events = [json.loads(posted)["event"] for _, posted in hook.posts]
            assert events == ["alert.raised", "alert.cleared"]


async def test_etcd_away_refuses_writes_serves_reads_and_recovers(etcd: Etcd) -> None:
    env = replica_env(etcd, SERVICE_REGISTRATION_TTL_SECONDS="3")
    async with replicas(2, env) as (a, b), httpx.AsyncClient(timeout=10) as client:
        assert (
            await client.post(f"{a.rest_url}/v1/discovery/register", json=body("g-1"))
        ).is_success

        async def on_b() -> bool:
            return bool(await instance_ids(client, b.rest_url, "game"))

        await eventually(on_b, within=2)
        etcd.stop()
        answer = await client.post(f"{a.rest_url}/v1/discovery/register", json=body("g-2"))
        assert answer.status_code == 503, answer.text
        async with grpc.aio.insecure_channel(b.grpc_target) as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            request = pb.RegisterRequest(
                service_name="game", instance_id="g-3", host="127.0.0.1", port=1
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Register(request, timeout=15)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        # Reads serve the last state; heartbeats are answered; nothing expires meanwhile.
        for _ in range(8):
            for process in (a, b):
                assert await instance_ids(client, process.rest_url, "game") == ["g-1"]
                beat = {"service_name": "game", "instance_id": "g-1"}
                answer = await client.post(f"{process.rest_url}/v1/discovery/heartbeat", json=beat)
                assert answer.status_code == 200
            await asyncio.sleep(0.5)
        etcd.start()
        await etcd.wait_healthy()

        async def accepted() -> bool:
            answer = await client.post(f"{b.rest_url}/v1/discovery/register", json=body("g-4"))
            return answer.status_code == 200

        await eventually(accepted, within=15, every=0.3)
        for process in (a, b):
            await eventually(
                functools.partial(_has, client, process.rest_url, {"g-1", "g-4"}), within=2
            )


async def test_a_replica_cut_off_past_a_compaction_catches_up_from_a_fresh_read(
    etcd: Etcd,
) -> None:
    """B loses etcd while A writes; etcd compacts the history B would resume from; once B
    reaches etcd again it reloads: the instance added, the one changed and the one removed
    meanwhile are as on A, and B's watchers get those changes."""
    member = etcd.members[0]
    cutter = Cutter("127.0.0.1", member.client_port)
    relay = await cutter.start()
    env = replica_env(etcd)
    b_env = {**env, "SERVICE_DISCOVERY_STORE": f"etcd://127.0.0.1:{relay}/service-discovery"}
    async with (
        replicas(1, env) as (a,),
        replicas(1, b_env) as (b,),
        httpx.AsyncClient(timeout=10) as client,
    ):
        for name in ("g-1", "g-2"):
            await register(client, a.rest_url, name)
        await eventually(functools.partial(_has, client, b.rest_url, {"g-1", "g-2"}), within=5)
        watch = GrpcWatch(b.grpc_target, services=("game",))
        await eventually(lambda: watch.synced, within=10)
        cutter.cut()
        await eventually(lambda: "etcd is unreachable" in b.output, within=15)
        await register(client, a.rest_url, "g-3")
        moved = await client.post(f"{a.rest_url}/v1/discovery/register", json=body("g-2", 9090))
        assert moved.is_success, moved.text
        gone = await client.delete(f"{a.rest_url}/v1/discovery/unregister/game/g-1")
        assert gone.is_success, gone.text
        compact(etcd)
        # Meanwhile B serves the last state it had.
        assert sorted(await instance_ids(client, b.rest_url, "game")) == ["g-1", "g-2"]
        cutter.restore()
        await eventually(lambda: "compacted the history" in b.output, within=20)
        await eventually(functools.partial(_has, client, b.rest_url, {"g-2", "g-3"}), within=5)
        assert sorted(await instance_ids(client, b.rest_url, "game")) == ["g-2", "g-3"]
        service = await client.get(f"{b.rest_url}/v1/discovery/services/game")
        ports = {i["instance_id"]: i["port"] for i in service.json()["instances"]}
        assert ports == {"g-2": 9090, "g-3": 8080}
        # The watcher on B saw the same: g-1 deleted, g-2 changed, g-3 added, in revision order.
        await eventually(lambda: {"g-1", "g-2", "g-3"} <= {e[1] for e in watch.events()}, 5)
        events = watch.events()
        assert [r for _, _, r in events] == sorted(r for _, _, r in events)
        last = {instance: kind for kind, instance, _ in events}
        assert last == {"g-1": "DELETE", "g-2": "PUT", "g-3": "PUT"}
        assert watch.error is None
        await watch.close()
    await cutter.close()


async def test_a_replica_started_before_etcd_waits_for_it_then_serves(etcd: Etcd) -> None:
    cutter = Cutter("127.0.0.1", etcd.members[0].client_port)
    relay = await cutter.start()
    cutter.cut()
    env = {**replica_env(etcd), "SERVICE_DISCOVERY_STORE": f"etcd://127.0.0.1:{relay}"}
    async with await ServerProcess.start(env=env, wait=False) as replica:
        await replica.wait_for_line("Waiting for etcd", within=15)
        assert not replica.ports  # no port announced before etcd's state is loaded
        async with replicas(1, replica_env(etcd)) as (other,), httpx.AsyncClient() as client:
            await register(client, other.rest_url, "g-1")
            cutter.restore()
            await replica.wait_listening(within=20)
            assert await instance_ids(client, replica.rest_url, "game") == ["g-1"]
            await register(client, replica.rest_url, "g-2")
            assert await replica.stop() == 0
    await cutter.close()


async def test_a_replica_gives_up_with_exit_1_when_etcd_stays_away() -> None:
    env = {
        "SERVICE_DISCOVERY_STORE": f"etcd://127.0.0.1:{free_port()}",
        "SERVICE_DISCOVERY_ETCD_START_TIMEOUT_SECONDS": "2",
    }
    async with await ServerProcess.start(env=env, wait=False) as replica:
        assert await replica.wait(within=30) == 1
    assert not replica.ports
    assert "Waiting for etcd" in replica.output
    assert "etcd is unreachable" in replica.lines[-1], replica.output


async def _has(client: httpx.AsyncClient, url: str, wanted: set[str]) -> bool:
    return wanted <= set(await instance_ids(client, url, "game"))


async def test_a_three_member_etcd_losing_its_leader() -> None:
    async with (
        running_etcd(3) as etcd,
        httpx.AsyncClient(timeout=10) as client,
        replicas(3, replica_env(etcd)) as processes,
    ):
        acked: set[str] = set()
        stop = asyncio.Event()

        async def writer(n: int) -> None:
            i = 0
            while not stop.is_set():
                name = f"w{n}-{i}"
                url = processes[i % 3].rest_url
                try:
                    answer = await client.post(f"{url}/v1/discovery/register", json=body(name))
                except httpx.HTTPError:
                    answer = None
                if answer is not None and answer.status_code == 200:
                    acked.add(name)
                i += 1
                await asyncio.sleep(0.05)

        writers = [asyncio.create_task(writer(n)) for n in range(2)]
        await eventually(lambda: len(acked) >= 10, within=10)
        leader = await asyncio.to_thread(etcd.leader)
        leader.stop(signal.SIGKILL)
        lost = time.monotonic()
        count = len(acked)
        # The replicas carry on within 10 s, and nothing acknowledged is lost.
        await eventually(lambda: len(acked) >= count + 10, within=10)
        assert time.monotonic() - lost < 10
        stop.set()
        await asyncio.gather(*writers)
        for process in processes:
            await eventually(functools.partial(_has, client, process.rest_url, acked), within=3)


async def _status(client: httpx.AsyncClient, url: str, instance: str) -> str | None:
    answer = await client.get(f"{url}/v1/discovery/services/game")
    if answer.status_code != 200:
        return None
    found = [i["status"] for i in answer.json()["instances"] if i["instance_id"] == instance]
    return found[0] if found else None


async def _keep_alive(target: str, instance: str) -> tuple[grpc.aio.Channel, object]:
    channel = grpc.aio.insecure_channel(target)
    call = pb_grpc.DiscoveryServiceStub(channel).KeepAlive(None)
    await call.write(pb.KeepAliveRequest(service_name="game", instance_id=instance))
    ack = await call.read()
    assert isinstance(ack, pb.KeepAliveResponse)
    assert ack.code == 0
    return channel, call


async def test_a_broken_keepalive_downs_the_instance_on_every_replica_within_a_second(
    etcd: Etcd,
) -> None:
    async with replicas(3, replica_env(etcd)) as (a, b, c), httpx.AsyncClient(timeout=10) as client:
        assert (
            await client.post(f"{a.rest_url}/v1/discovery/register", json=body("g-1"))
        ).is_success
        # B learns of it through etcd's watch, a moment later.
        await eventually(lambda: _has(client, b.rest_url, {"g-1"}), within=1)
        channel, _ = await _keep_alive(b.grpc_target, "g-1")
        await asyncio.sleep(0.3)  # the stream's hold is written through
        await channel.close(None)  # the connection breaks
        broken = time.monotonic()
        for process in (a, c, b):
            await eventually(
                functools.partial(_is, client, process.rest_url, "unhealthy"), within=2
            )
        assert time.monotonic() - broken < 1.5
        # A heartbeat on another replica brings it back everywhere.
        beat = {"service_name": "game", "instance_id": "g-1"}
        assert (await client.post(f"{c.rest_url}/v1/discovery/heartbeat", json=beat)).is_success
        for process in (a, b):
            await eventually(functools.partial(_is, client, process.rest_url, "healthy"), within=1)


async def test_instances_kept_alive_by_a_dead_replica_turn_unhealthy(etcd: Etcd) -> None:
    async with replicas(2, replica_env(etcd)) as (a, b), httpx.AsyncClient(timeout=10) as client:
        assert (
            await client.post(f"{a.rest_url}/v1/discovery/register", json=body("g-1"))
        ).is_success
        # B learns of it through etcd's watch, a moment later.
        await eventually(lambda: _has(client, b.rest_url, {"g-1"}), within=1)
        channel, _ = await _keep_alive(b.grpc_target, "g-1")
        await asyncio.sleep(0.5)  # the stream's hold is written through
        await b.kill()
        killed = time.monotonic()
        # Within the replica TTL (2 s) + 1 s.
        await eventually(lambda: _is(client, a.rest_url, "unhealthy"), within=5)
        assert time.monotonic() - killed < 3.5
        await channel.close(None)


async def _is(client: httpx.AsyncClient, url: str, status: str) -> bool:
    return await _status(client, url, "g-1") == status


async def test_replicas_sign_in_to_an_etcd_with_authentication(etcd: Etcd) -> None:
    await asyncio.to_thread(etcd.enable_auth, "discovery", "s3cret")
    env = replica_env(
        etcd,
        SERVICE_DISCOVERY_ETCD_USERNAME="discovery",
        SERVICE_DISCOVERY_ETCD_PASSWORD="s3cret",
    )
    async with replicas(2, env) as (a, b), httpx.AsyncClient(timeout=10) as client:
        await register(client, a.rest_url, "g-1")
        await eventually(lambda: _has(client, b.rest_url, {"g-1"}), within=1)
    # Without credentials etcd refuses every call.
    with pytest.raises(urllib.error.HTTPError):
        await asyncio.to_thread(etcd.json_get_prefix, "/service-discovery/")


async def test_replicas_reach_etcd_over_tls_with_a_client_certificate() -> None:
    async with running_etcd(tls=True) as etcd, httpx.AsyncClient(timeout=10) as client:
        tls = etcd.members[0].tls
        assert tls is not None
        env = replica_env(
            etcd,
            SERVICE_DISCOVERY_ETCD_CA_FILE=tls.ca,
            SERVICE_DISCOVERY_ETCD_CERT_FILE=tls.client_cert,
            SERVICE_DISCOVERY_ETCD_KEY_FILE=tls.client_key,
        )
        async with replicas(2, env) as (a, b):
            await register(client, a.rest_url, "g-1")
            await eventually(lambda: _has(client, b.rest_url, {"g-1"}), within=1)
