"""fedprune on Flower: what the messages carry (fast), and the same results as the in-process
engine in Flower's simulation (Ray actors, in a private network namespace) and deployment
(a SuperLink and two SuperNodes on 127.0.0.1) (slow).

Run as a script, this file is the simulation's driver inside the namespace:
``python tests/test_flower.py simulate OUT WORKERS METHODS``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("flwr")

from fedprune import comm  # noqa: E402
from fedprune.bench import BenchPlan, run_bench  # noqa: E402
from fedprune.contracts import RoundPlan  # noqa: E402
from fedprune.engine.client import InProcessClients  # noqa: E402
from fedprune.engine.config import RunConfig, cli_name, config_fields  # noqa: E402
from fedprune.engine.prepare import make_federation, prepare  # noqa: E402
from fedprune.engine.simulation import Simulation  # noqa: E402
from fedprune.errors import FedpruneError  # noqa: E402
from fedprune.flower import APP_DIR  # noqa: E402
from fedprune.flower import messages as W  # noqa: E402
from fedprune.flower import server as S  # noqa: E402
from fedprune.testing import host_plugin_manager, load_entry_point, tiny_config  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

COMPARED = ("status", "final_accuracy", "best_accuracy", "final_loss", "density", "rounds",
            "upload_bytes", "download_bytes", "history", "adjustments", "warnings")


# ------------------------------------------------------------------------------------ records


def test_records_keep_dtype_shape_and_values():
    tensors = {
        "f32": torch.randn(3, 4), "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "i64": torch.tensor(7), "i32": torch.arange(6, dtype=torch.int32).view(2, 3),
        "u8": torch.arange(9, dtype=torch.uint8), "bool": torch.rand(4, 4) > 0.5,
        "empty": torch.zeros(0), "strided": torch.randn(4, 6)[:, ::2],
    }
    back = W.from_record(W.to_record(tensors))
    assert list(back) == list(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape, name
        assert torch.equal(back[name], tensor), name
        if tensor.dtype != torch.bfloat16:  # numpy has no bfloat16
            assert back[name].numpy().flags.writeable  # no read-only warning from torch


def _state_and_masks(densities):
    generator = torch.Generator().manual_seed(0)
    state, masks = {"bias": torch.randn(10, generator=generator)}, {}
    for i, density in enumerate(densities):
        name = f"layer{i}.weight"
        masks[name] = torch.rand(40, 50, generator=generator) < density
        state[name] = torch.randn(40, 50, generator=generator) * masks[name]
    return state, masks


def test_a_state_with_positions_gives_the_receiver_its_masks():
    # bitmap, int32 indices, dense (d > 31/32), full, empty
    state, masks = _state_and_masks([0.3, 0.01, 0.99, 1.01, 0.0])
    arrays = W.pack_state(state, masks, positions=True)
    assert "layer0.weight/bitmap" in arrays and "layer1.weight/index" in arrays
    assert arrays["layer3.weight/mask"].numel() == 0  # a full mask costs nothing
    assert W.array_bytes(W.to_record(arrays)) == comm.state_bytes(state, masks) + 250
    got = W.unpack_masks(arrays, state, sorted(masks))
    assert all(torch.equal(got[n], masks[n]) for n in masks)
    back = W.unpack_state(arrays, state, None)
    assert all(torch.equal(back[n], state[n]) for n in state)


def test_a_state_with_values_off_its_mask_travels_whole():
    state, masks = _state_and_masks([0.3])
    state["layer0.weight"] = torch.randn(40, 50)  # a strategy's setup sends the dense state
    arrays = W.pack_state(state, masks, positions=True)
    assert torch.equal(W.unpack_state(arrays, state, None)["layer0.weight"],
                       state["layer0.weight"])
    assert torch.equal(W.unpack_masks(arrays, state, ["layer0.weight"])["layer0.weight"],
                       masks["layer0.weight"])


def test_values_only_decode_with_the_receivers_masks():
    state, masks = _state_and_masks([0.3, 0.01])
    arrays = W.pack_state(state, masks, positions=False)
    assert not any(k.endswith(("/bitmap", "/index", "/mask")) for k in arrays)
    assert W.array_bytes(W.to_record(arrays)) == comm.state_bytes(state, masks, positions=False)
    back = W.unpack_state(arrays, state, masks)
    assert all(torch.equal(back[n], state[n]) for n in state)


@pytest.mark.parametrize("method,round_", [("feddst", 1), ("feddst", 2), ("prunefl", 1),
                                           ("fedavg", 1)])
def test_uploaded_bytes_are_the_reply_arrays(digits, method, round_):
    """What `Simulation` counts as uploaded equals the arrays a reply carries, and a request
    carries what it counts as downloaded: measured on real client updates."""
    pm = host_plugin_manager()
    federation = make_federation(pm.registry, tiny_config(), 0, digits)
    run = prepare(pm.registry, pm.registry.method(method), federation)
    plan = run.parts.strategy.plan(run, round_)
    update = run.trainer.train(0, run.state, run.masks, plan, 0.05)
    assert (update.masks is not None) == (method == "feddst" and plan.adjusting)
    assert bool(update.payload) == (method == "prunefl" and plan.adjusting)
    counted = Simulation(run)._upload_bytes(update.state, update.masks, update.payload)
    reply = W.encode_update(update, run.masks)
    assert W.array_bytes(reply.array_records[W.STATE]) + W.array_bytes(
        reply.array_records[W.PAYLOAD]) == counted
    request = W.to_record(W.pack_state(run.state, run.masks, positions=True))
    assert W.array_bytes(request) == comm.state_bytes(run.state, run.masks, positions=True)
    serialized = sum(len(a.data) for a in reply.array_records[W.STATE].values())
    assert serialized - W.array_bytes(reply.array_records[W.STATE]) <= 128 * len(
        reply.array_records[W.STATE])  # Flower adds one npy header per array


def test_a_run_spec_and_a_plan_survive_their_records():
    config = tiny_config(data_root="/data", local_steps=None, options={"cnn.width": 4})
    spec = W.RunSpec("feddst+sap", config, 3, ("builtins=fedprune.builtins",), 2)
    back = W.RunSpec.from_record(spec.record())
    assert back == spec and back.id == spec.id
    assert W.RunSpec("feddst", config, 4).id != W.RunSpec("feddst", config, 3).id
    plan = RoundPlan(5, {"conv1.weight": 3}, {"layers": ["conv1.weight"], "k": 0.5})
    assert W.plan_from_json(W.plan_to_json(plan)) == plan


# ------------------------------------------------------------------------------ the exchange


class FakeGrid:
    """Replies to pushed messages later and in scrambled order; records what was out."""

    def __init__(self, fail: int | None = None) -> None:
        self.out: dict[str, tuple[int, float]] = {}  # message id -> (node, ready at)
        self.most_out, self.fail, self.count = 0, fail, 0
        self.nodes_out: list[list[int]] = []

    def push_messages(self, messages):
        ids = []
        for message in messages:
            self.count += 1
            mid = f"m{self.count}"
            self.out[mid] = (message.node, time.monotonic() + 0.005 * ((7 * self.count) % 5))
            ids.append(mid)
        self.most_out = max(self.most_out, len(self.out))
        self.nodes_out.append(sorted(node for node, _ in self.out.values()))
        return ids

    def pull_messages(self, ids):
        now, replies = time.monotonic(), []
        for mid in list(ids):
            node, ready = self.out[mid]
            if ready <= now:
                del self.out[mid]
                error = SimpleNamespace(reason="boom") if node == self.fail else None
                replies.append(SimpleNamespace(
                    metadata=SimpleNamespace(reply_to_message_id=mid),
                    has_error=lambda e=error: e is not None, error=error))
        return replies[::-1]


def _requests(clients, nodes):
    return [S.Request(c, c % nodes, SimpleNamespace(node=c % nodes)) for c in clients]


def test_replies_come_in_client_order_with_a_bounded_window():
    grid, stats = FakeGrid(), {}
    requests = _requests([1, 2, 4, 5, 7, 8, 9], nodes=4)
    got = [c for c, _ in S.exchange(grid, requests, window=3, poll=0.001, stats=stats)]
    assert got == [1, 2, 4, 5, 7, 8, 9]
    assert grid.most_out <= 3 and stats["held"] <= 3
    assert all(len(out) == len(set(out)) for out in grid.nodes_out)  # one message per node


def test_a_failed_client_or_a_stop_ends_the_exchange():
    with pytest.raises(FedpruneError, match="client 2 on node 2 failed: boom"):
        list(S.exchange(FakeGrid(fail=2), _requests([1, 2], 4), window=2, poll=0.001))
    stop = threading.Event()
    stop.set()
    with pytest.raises(S.Stopped):
        list(S.exchange(FakeGrid(), _requests([1], 4), window=1, poll=0.001, stop=stop))


# ---------------------------------------------------------------------------- plugins, app


def test_plugins_travel_by_name_and_a_method_that_cannot_is_refused():
    pm = host_plugin_manager()
    load_entry_point(pm, "snip")
    refs = S.plugin_refs(pm)
    assert refs[0] == "builtins=fedprune.builtins" and "snip=fedprune_snip" in refs
    S._check_travels(pm.registry, pm.registry.method("feddst_taylor"), tiny_config(), refs)

    from fedprune import Method, hookimpl

    class Local:  # an object made at run time: nodes cannot import it
        @hookimpl
        def fedprune_methods(self):
            return [Method("local_dst", strategy="client_adjust", pruning_criterion="magnitude",
                           growth_criterion="gradient", schedule="cosine")]

    pm.register(Local(), name="local")
    assert not any(r.startswith("local=") for r in S.plugin_refs(pm))
    with pytest.raises(FedpruneError, match="plugin.s. local"):
        S._check_travels(pm.registry, pm.registry.method("local_dst"), tiny_config(), refs)


def test_the_app_lists_every_run_config_key_with_fedprunes_defaults():
    app = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    config = app["tool"]["flwr"]["app"]["config"]
    expected = dict(S.APP_KEYS)
    for f in config_fields():
        default = f.default
        if default is None:
            default = "" if "str" in str(f.type) else 0
        expected[cli_name(f.name)] = default
    assert config == expected
    components = app["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "fedprune.flower.server:server_app",
                          "clientapp": "fedprune.flower.client:client_app"}
    assert S.app_plan(config).grid == (RunConfig(),)


def test_the_app_reads_a_bench_from_its_run_config():
    run_config = {**S.APP_KEYS, "methods": "fedavg, feddst", "seeds": "1,2", "rounds": 3,
                  "density": "0.1,0.5", "options": "cnn.width=4 cosine.interval=1,2",
                  "local-steps": 2, "data-root": ""}
    plan = S.app_plan(run_config)
    assert plan.methods == ("fedavg", "feddst") and plan.seeds == (1, 2)
    assert [(c.density, c.options["cosine.interval"]) for c in plan.grid] == [
        (0.1, 1), (0.1, 2), (0.5, 1), (0.5, 2)]
    assert all(c.rounds == 3 and c.local_steps == 2 and c.data_root is None for c in plan.grid)
    preset = S.app_plan({**S.APP_KEYS, "preset": "fedmef-cifar10-resnet18", "rounds": 2})
    assert preset.grid[0].dataset == "cifar10" and preset.grid[0].rounds == 2


# ------------------------------------------------------------------------- slow: equal results


def _plan(methods: tuple[str, ...], **settings) -> BenchPlan:
    options = {"cnn.width": 4, "cosine.interval": 1, "cosine.stop": 1.0,
               "prunefl_adaptive.init_samples": 64, "prunefl_adaptive.init_steps": 2,
               "prunefl_adaptive.init_max_reconfigs": 10}
    base = dict(rounds=3, clients=4, clients_per_round=2, local_steps=2, batch_size=16,
                eval_every=1, density=0.3, options=options)
    return BenchPlan(methods, (0,), (RunConfig(**{**base, **settings}),))


def _plugins():
    pm = host_plugin_manager()
    load_entry_point(pm, "snip")  # a third-party plugin: nodes load it by its entry point
    return pm


def _in_process(plan: BenchPlan, out: Path) -> tuple[list[dict], list[str]]:
    """Results and final state digests of the in-process engine (one torch thread)."""
    trainers = []

    def executor(trainer):
        trainers.append(trainer)
        return InProcessClients(trainer)

    results = run_bench(_plugins(), plan, out, executor=executor)
    return results, [S.state_digest(t.model.state_dict()) for t in trainers]


def _assert_same(expected: tuple[list[dict], list[str]], out: Path) -> dict:
    results, digests = expected
    got = json.loads((out / "results.json").read_text())
    flower = json.loads((out / "flower.json").read_text())
    assert [r["key"] for r in got] == [r["key"] for r in results]
    for want, have, digest in zip(results, got, digests, strict=True):
        assert want["status"] == "ok", want.get("error")
        assert {k: have.get(k) for k in COMPARED} == {k: want.get(k) for k in COMPARED}, want["key"]
        assert flower["runs"][want["key"]]["final_state_sha256"] == digest, want["key"]
    return flower


def _namespace_works() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


SIM_METHODS = ("fedavg", "feddst", "prunefl+prunefl_adaptive", "fedmef", "feddst_taylor")


@pytest.mark.slow
def test_flower_simulation_equals_the_in_process_engine(tmp_path):
    """`fedprune bench --engine flower --workers 2`: two Ray actors, one SuperNode per client;
    every kind of strategy (client and server adjustment, a client task in setup, a
    third-party plugin). Ray runs in its own network
    namespace, and nothing there listens beyond loopback."""
    if not _namespace_works():
        pytest.skip("needs a private network namespace (unshare -n, as root) to confine Ray")
    expected = _in_process(_plan(SIM_METHODS), tmp_path / "in-process")
    out = tmp_path / "flower"
    script = (f"ip link set lo up && exec timeout 420 {sys.executable} {__file__} simulate "
              f"{out} 2 {','.join(SIM_METHODS)}")
    run = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True,
                         timeout=480, env={**os.environ, "FEDPRUNE_DISABLE_PLUGIN_AUTOLOAD": "1",
                                           "FEDPRUNE_PLUGINS": "snip"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    flower = _assert_same(expected, out)
    assert all(e["held"] <= flower["window"] == 2 for r in flower["runs"].values()
               for e in r["exchanges"])
    listening = json.loads((out / "listening.json").read_text())
    assert listening and all(_loopback(a) for a in listening), listening


@pytest.mark.slow
def test_flower_deployment_equals_the_in_process_engine(tmp_path):
    """`flwr run` of the app against a SuperLink with two SuperNodes (partitions 0 and 1 of
    four clients) on 127.0.0.1; every process this test starts is stopped by PID."""
    plan = _plan(("feddst",), rounds=2)
    expected = _in_process(plan, tmp_path / "in-process")
    out = tmp_path / "flower"
    config = plan.grid[0]
    run_config = " ".join([
        'methods="feddst"', f"rounds={config.rounds}", f"clients={config.clients}",
        f"clients-per-round={config.clients_per_round}", f"local-steps={config.local_steps}",
        f"batch-size={config.batch_size}", f"eval-every={config.eval_every}",
        f"density={config.density}", "min-nodes=2", "threads=1", f'output="{out}"',
        'options="{}"'.format(" ".join(f"{k}={v}" for k, v in config.options.items())),
    ])
    with Deployment(tmp_path, nodes=2) as deployment:
        deployment.run(run_config, deadline=360)
    _assert_same(expected, out)


# ----------------------------------------------------------------------- deployment helpers


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (pid -> command line), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = _cmdline(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


class Deployment:
    """A SuperLink and ``nodes`` SuperNodes on 127.0.0.1, each in its own session with its own
    FLWR_HOME. On exit: each is stopped (tests/servers.py), then any process they started that
    is still alive (Flower starts app processes detached) is killed by PID."""

    def __init__(self, root: Path, nodes: int) -> None:
        from servers import free_port

        self.root, self.nodes, self.port = root, nodes, free_port()
        self.bin = Path(sys.executable).parent
        self.env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "NO_COLOR": "1", "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
                    "FEDPRUNE_DISABLE_PLUGIN_AUTOLOAD": "1"}
        self.stack = ExitStack()
        self.procs: list[subprocess.Popen] = []

    def _home(self, name: str) -> dict[str, str]:
        home = self.root / name
        home.mkdir(exist_ok=True)
        return {**self.env, "FLWR_HOME": str(home)}

    def __enter__(self) -> Deployment:
        from servers import free_port, http_ok, serve

        try:
            self.procs.append(self.stack.enter_context(serve(
                [str(self.bin / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                 "--port", str(self.port), "--disable-runtime-dependency-installation"],
                self.root / "superlink.log", http_ok(f"http://127.0.0.1:{self.port}/health"),
                env=self._home("superlink"))))
            for i in range(self.nodes):
                config = f'partition-id={i} num-partitions={self.nodes} data-root="{self.root}"'
                self.procs.append(self.stack.enter_context(serve(
                    [str(self.bin / "flower-supernode"), "--insecure", "--superlink",
                     f"127.0.0.1:{self.port}", "--node-config", config, "--host", "127.0.0.1",
                     "--port", str(free_port())],
                    self.root / f"supernode{i}.log", lambda: True, env=self._home(f"node{i}"))))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        cli = self.root / "cli"
        cli.mkdir()
        (cli / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.cli = {**self.env, "FLWR_HOME": str(cli)}
        return self

    def flwr(self, *args: str, timeout: float = 60) -> dict:
        done = subprocess.run([str(self.bin / "flwr"), *args, "--format", "json"],
                              env=self.cli, capture_output=True, text=True, timeout=timeout)
        return json.loads(done.stdout)

    def run(self, run_config: str, deadline: float) -> None:
        """``flwr run`` the app and wait until the SuperLink reports the run finished."""
        started = self.flwr("run", str(APP_DIR), "local", "--run-config", run_config,
                            timeout=120)
        assert started.get("success"), started  # `flwr run` exits 0 on failure
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            runs = self.flwr("ls", "local")["runs"]
            status = next(r["status"] for r in runs if r["run-id"] == started["run-id"])
            if status.startswith("finished"):
                assert status == "finished:completed", self.logs()
                return
            time.sleep(2)
        raise AssertionError(f"the run did not finish in {deadline} s\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.root.glob("*.log")))

    def __exit__(self, *exc: object) -> None:
        started = {}
        for proc in self.procs:
            started.update(_descendants(proc.pid))
        self.stack.close()  # SIGTERM each process group, SIGKILL after 10 s
        end = time.monotonic() + 15
        for pid, cmdline in started.items():
            while _cmdline(pid) == cmdline and cmdline and time.monotonic() < end:
                time.sleep(0.2)
            if _cmdline(pid) == cmdline and cmdline:  # same pid, same command: still ours
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------ the simulation's driver


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1") or (
        address.startswith("::ffff:127."))


def _listening() -> set[str]:
    """Local addresses of listening TCP and bound UDP sockets in this network namespace."""
    found = set()
    for name, family, state in (("tcp", socket.AF_INET, "0A"), ("tcp6", socket.AF_INET6, "0A"),
                                ("udp", socket.AF_INET, "07"), ("udp6", socket.AF_INET6, "07")):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != state:
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, packed))
    return found


def _simulate(out: Path, workers: int, methods: tuple[str, ...]) -> None:
    from fedprune.cli import main

    torch.set_num_threads(1)
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            seen.update(_listening())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    (config,) = _plan(methods).grid
    args = ["bench", "--engine", "flower", "--workers", str(workers), "--threads", "1",
            "--methods", ",".join(methods), "--output", str(out), "--no-tracking", "--no-report",
            *(f"--{cli_name(f.name)}={getattr(config, f.name)}" for f in config_fields()
              if getattr(config, f.name) != f.default),  # what `_plan` set
            *(a for k, v in config.options.items() for a in ("-o", f"{k}={v}"))]
    try:
        main(args, standalone_mode=False)  # the command line a user runs
    finally:
        done.set()
        watcher.join()
        (out / "listening.json").write_text(json.dumps(sorted(seen)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["simulate"]:
        _simulate(Path(sys.argv[2]), int(sys.argv[3]), tuple(sys.argv[4].split(",")))
