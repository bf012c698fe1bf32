"""One MLX model across the ranks of an `mlx.launch` group (mlx.distributed: ring, MPI or JACCL).

Rank 0 owns everything a user sees: tokenizer, sampling, the decoding strategy, all output. It
drives the model through the same `LanguageModel` interface as on one machine; each call becomes a
command that every rank receives (a broadcast: an all-sum to which only rank 0 contributes), then
every rank runs its share of the forward pass:

- **tensor parallel** (the default): each rank holds 1/n of every layer's attention heads (query
  and key/value heads alike) and MLP columns; the two partial outputs of a layer are summed over
  the group (one all-sum each), as Megatron-LM splits a layer. Embedding, norms and LM head are
  replicated. Each rank's KV cache holds its own heads.
- **pipeline parallel** (`--pipeline`): each rank holds a contiguous run of layers (and its part
  of the KV cache); the hidden states go rank 0 → 1 → … → n−1 → 0 with send/recv; rank 0 also
  holds the embedding, the final norm and the LM head.

Each rank reads only its share of the checkpoint: tensors are loaded lazily, sliced and evaluated
one at a time, so its peak is its share plus one tensor.

Failures end the run everywhere with one line and no hang: a rank that stops or a connection that
drops makes every collective fail at once (mlx.distributed raises), and a watchdog bounds the rest:
a command or forward pass that takes longer than EDGEGEN_DISTRIBUTED_TIMEOUT seconds (default
120), or a follower that hears nothing from rank 0 for that long (rank 0 sends a heartbeat when
idle), ends the process. Loading a model is not watched (a large share may take minutes to read).
Followers ignore Ctrl-C; rank 0's Ctrl-C ends its run and, at exit, theirs.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import signal
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from edgegen.archs._decoder import DecoderConfig
from edgegen.core.errors import ConfigError, EdgegenError
from edgegen.core.memory import peak_rss_mb
from edgegen.core.protocols import Feed, KVSpec

LAUNCH_ENV = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")  # set by mlx.launch (ring, jaccl) or mpirun
TIMEOUT_ENV = "EDGEGEN_DISTRIBUTED_TIMEOUT"
MODES = ("tensor", "pipeline")

# Commands: a header of HEADER float32 values, then a float32 payload of header[LEN] values.
HEADER = 16
LOAD, FORWARD, NEW_CACHE, TRUNCATE, DROP, STATS, PING, STOP = range(1, 9)
OP, MODEL, CACHE, LEN, ARG, N_TOK, N_EMB, HAS_POS, HAS_BLOCKS, HID0, HID1, COMMIT, ROW0, ROW1, GROUP_SIZE = range(15)


class DistributedError(EdgegenError):
    """The group broke: a rank stopped, the network dropped or a collective timed out."""

    exit_code = 1


_group = None
_checked = False


def launched() -> bool:
    return any(key in os.environ for key in LAUNCH_ENV)


def group():
    """The mlx.distributed group of this process when it runs under a launcher with more than one
    rank, else None. Followers (rank > 0) are made quiet here: their standard output goes nowhere."""
    global _group, _checked
    if _checked:
        return _group
    _checked = True
    if not launched():
        return None
    try:
        import mlx.core as mx
    except ImportError:
        raise ConfigError("this process runs under a distributed launcher, which needs MLX; "
                          "`pip install mlx` (macOS) or `pip install 'mlx[cpu]'` (Linux)") from None
    g = mx.distributed.init()
    if g.size() > 1:
        _group = g
        if g.rank() != 0:
            sys.stdout = open(os.devnull, "w")
            os.environ["TQDM_DISABLE"] = "1"
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when the run ends
            signal.signal(signal.SIGTERM, lambda *_: die(  # mlx.launch stops the others once a rank dies
                f"rank {g.rank()} was stopped (another rank ended first); the distributed run ends"))
        elif threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _rank_0_stopped)
    return _group


def _rank_0_stopped(signum, frame) -> None:
    """SIGTERM on rank 0: mlx.launch sends it once another rank has died, often before rank 0's
    own collective notices. One line, then SystemExit, so that rank 0's `finally` blocks run. From
    here on nothing goes out: a `finally` that sends a command meets the same SystemExit, and the
    STOP at exit is skipped (a collective with a dead peer fails, or blocks until the watchdog
    ends the process, each with a second line)."""
    if _channel is not None:
        _channel.stopped, _channel.broken = 128 + signum, True
    sys.stderr.write("edgegen: error: rank 0 was stopped (SIGTERM: the launcher stops every rank once one has "
                     "ended, or someone asked); the distributed run ends\n")
    sys.stderr.flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the process
    sys.exit(128 + signum)


def is_follower() -> bool:
    return _group is not None and _group.rank() != 0


def timeout_s() -> float:
    try:
        return max(1.0, float(os.environ.get(TIMEOUT_ENV, "120")))
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, got {os.environ[TIMEOUT_ENV]!r}") from None


def _collective(fn):
    """Run one mlx.distributed operation; a lost peer becomes one DistributedError."""
    import mlx.core as mx

    try:
        out = fn()
        mx.eval(out)
        return out
    except RuntimeError as exc:
        raise failure(exc) from None


def failure(exc: Exception) -> "DistributedError":
    """The one line for an error raised inside a collective or a sharded forward pass."""
    rank, text = _group.rank() if _group else 0, " ".join(str(exc).split())[:160]
    if any(mark in text for mark in ("[ring]", "[mpi]", "[jaccl]", "connection", "peer")):
        return DistributedError(f"rank {rank} lost the other ranks ({text}): a rank stopped or the network "
                                "dropped; the distributed run ends")
    return DistributedError(f"rank {rank} failed ({text}); the distributed run ends")


def die(message: str) -> None:
    """One line, then end this process at once (a blocked collective cannot be interrupted)."""
    sys.stderr.write(f"edgegen: error: {message}\n")
    sys.stderr.flush()
    os._exit(1)


class Channel:
    """Rank 0's commands to every rank, serialised by one lock, watched by a timer; one per process."""

    def __init__(self, g):
        self.group, self.rank, self.size = g, g.rank(), g.size()
        self.lock = threading.RLock()
        self.timeout = timeout_s()
        self.busy_since: float | None = None  # a command, a forward or a collective under way since
        self.last = time.monotonic()  # when the last command went out (rank 0) or came in (followers)
        self.broken = False
        self.stopped = 0  # rank 0's exit code once SIGTERM stopped it (see _rank_0_stopped)
        self.sent_bytes = 0  # bytes of the collectives and sends this rank took part in
        threading.Thread(target=self._watch, name="edgegen-distributed-watchdog", daemon=True).start()
        if self.rank == 0:
            threading.Thread(target=self._heartbeat, name="edgegen-distributed-heartbeat", daemon=True).start()

    def _watch(self) -> None:
        """Ends this process when a command or collective takes longer than the timeout, or (a
        follower) when rank 0 has been silent that long: a peer that vanished without closing its
        connections would otherwise leave this rank blocked for good."""
        while not self.broken:
            time.sleep(min(1.0, self.timeout / 4))
            now, busy = time.monotonic(), self.busy_since
            if busy is not None and now - busy > self.timeout:
                die(f"rank {self.rank}: no answer from the other ranks for {self.timeout:.0f} s ({TIMEOUT_ENV}); "
                    "the distributed run ends")
            if self.rank != 0 and busy is None and now - self.last > self.timeout:
                die(f"rank {self.rank} heard nothing from rank 0 for {self.timeout:.0f} s ({TIMEOUT_ENV}); "
                    "the distributed run ends")

    def _heartbeat(self) -> None:
        """Rank 0, while idle (a chat waiting for its user): a no-op command now and then."""
        while True:
            time.sleep(self.timeout / 4)
            if self.broken:  # a lost rank, or rank 0 stopped while this thread slept
                return
            if self.busy_since is None and time.monotonic() - self.last > self.timeout / 4 \
                    and self.lock.acquire(blocking=False):
                try:
                    self.command([PING])
                except DistributedError as exc:
                    die(str(exc))
                except SystemExit:  # rank 0 was stopped meanwhile (see _rank_0_stopped): nothing goes out
                    return
                finally:
                    self.lock.release()

    def _sum(self, values: np.ndarray) -> np.ndarray:
        import mlx.core as mx

        array = mx.array(values.astype(np.float32))
        self.sent_bytes += array.nbytes
        try:
            return np.array(_collective(lambda: mx.distributed.all_sum(array, group=self.group)))
        except DistributedError:
            self.broken = True
            raise

    def command(self, header: list[float], payload: np.ndarray | None = None) -> None:
        """Rank 0: send one command to every rank."""
        if self.stopped:
            raise SystemExit(self.stopped)
        with self.lock:
            self.busy_since = time.monotonic()
            try:
                head = np.zeros(HEADER, np.float32)
                head[:len(header)] = header
                head[LEN] = 0 if payload is None else payload.size
                self._sum(head)
                if payload is not None and payload.size:
                    self._sum(payload.ravel())
            finally:
                self.busy_since = None
                self.last = time.monotonic()

    def receive(self) -> tuple[np.ndarray, np.ndarray]:
        """Followers: the next command (header, payload)."""
        head = self._sum(np.zeros(HEADER, np.float32))
        self.last = time.monotonic()
        n = int(head[LEN])
        payload = self._sum(np.zeros(n, np.float32)) if n else np.zeros(0, np.float32)
        self.last = time.monotonic()
        return head, payload


# ---------------------------------------------------------------------------- sharding plans
@dataclasses.dataclass(frozen=True)
class Plan:
    mode: str
    rank: int
    size: int
    config: DecoderConfig  # this rank's local shapes
    layers: tuple[int, int]  # [first, end) global layer indices held here

    def global_name(self, name: str) -> str:
        """The checkpoint's name of a local parameter (pipeline ranks number their layers from 0)."""
        if self.mode == "pipeline" and name.startswith("model.layers."):
            index, rest = name[len("model.layers."):].split(".", 1)
            return f"model.layers.{int(index) + self.layers[0]}.{rest}"
        return name

    def describe(self) -> dict:
        if self.mode == "tensor":
            return {"heads": self.config.num_attention_heads, "kv_heads": self.config.num_key_value_heads,
                    "mlp_columns": self.config.intermediate_size}
        return {"layers": list(self.layers)}


def plan_for(config: DecoderConfig, mode: str, rank: int, size: int) -> Plan:
    if mode not in MODES:
        raise ConfigError(f"distributed mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "tensor":
        for what, count in (("attention heads", config.num_attention_heads),
                            ("key/value heads", config.num_key_value_heads),
                            ("MLP columns", config.intermediate_size)):
            if count % size:
                raise ConfigError(f"tensor parallelism splits the {what} ({count}) evenly over the ranks, and "
                                  f"{size} ranks do not divide them; use --pipeline, or {_divisors(config)} ranks")
        local = dataclasses.replace(config, num_attention_heads=config.num_attention_heads // size,
                                    num_key_value_heads=config.num_key_value_heads // size,
                                    intermediate_size=config.intermediate_size // size)
        return Plan(mode, rank, size, local, (0, config.num_hidden_layers))
    n = config.num_hidden_layers
    if size > n:
        raise ConfigError(f"pipeline parallelism gives each rank at least one of the {n} layers; "
                          f"{size} ranks are more than that")
    first, end = rank * n // size, (rank + 1) * n // size
    return Plan(mode, rank, size, dataclasses.replace(config, num_hidden_layers=end - first), (first, end))


def _divisors(config: DecoderConfig) -> str:
    counts = (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size)
    fits = [n for n in range(2, config.num_key_value_heads + 1) if all(c % n == 0 for c in counts)]
    return " or ".join(map(str, fits)) if fits else "no other number of"


_ROW_SPLIT = (".self_attn.q_proj.", ".self_attn.k_proj.", ".self_attn.v_proj.", ".mlp.gate_proj.", ".mlp.up_proj.")
_COLUMN_SPLIT = (".self_attn.o_proj.", ".mlp.down_proj.")


def shard_tensor(plan: Plan, name: str, array):
    """This rank's part of the checkpoint tensor `name` (tensor parallel: heads / columns)."""
    if plan.mode != "tensor" or ".layers." not in name:
        return array
    r, n = plan.rank, plan.size
    if any(part in name for part in _ROW_SPLIT):  # output features: weight, scales, biases, bias rows
        rows = array.shape[0] // n
        return array[r * rows:(r + 1) * rows]
    if any(part in name for part in _COLUMN_SPLIT):
        if name.endswith(".bias"):  # added once: after the sum, by rank 0
            return array if r == 0 else array * 0
        cols = array.shape[-1] // n
        return array[..., r * cols:(r + 1) * cols]
    return array


# ---------------------------------------------------------------------------- the sharded model
_channel: Channel | None = None
_models: list["ShardedModel"] = []  # by id, in load order (the same on every rank)


def channel() -> Channel:
    global _channel
    if _channel is None:
        _channel = Channel(group())
        if _channel.rank == 0:
            atexit.register(stop)
    return _channel


def load(folder: Path, manifest, device: str | None, mode: str, spec: dict) -> "ShardedModel":
    """Rank 0: shard the model of `folder` over the group. `spec` (JSON-able) is what the other
    ranks need to find the same model themselves (their `loader`, see `follow`)."""
    import json

    from edgegen.archs import arch_module

    ch = channel()
    config = arch_module(manifest.architecture).parse_config(manifest.config)
    plan_for(config, mode, 0, ch.size)  # a model that cannot be split so: one line here, before any rank loads
    with ch.lock:
        data = np.frombuffer(json.dumps({**spec, "device": device, "mode": mode}).encode(), np.uint8)
        ch.command([LOAD, len(_models)], data.astype(np.float32))
        # no watchdog while loading: reading a large share from disk may take minutes (a rank that
        # dies meanwhile still fails the barrier at once)
        model = ShardedModel(folder, manifest, device, mode, ch)
        _barrier(ch)  # every rank has its share
        ch.last = time.monotonic()
    _models.append(model)
    return model


def follow(loader) -> None:
    """Ranks other than 0: serve rank 0's commands until it stops, then end the process (exit
    code 0). `loader(spec)` gives (folder, manifest) for a LOAD command's spec."""
    import json

    ch = channel()
    try:
        while True:
            head, payload = ch.receive()
            op = int(head[OP])
            if op == STOP:
                break
            if op == LOAD:  # unwatched, as on rank 0
                spec = json.loads(payload.astype(np.uint8).tobytes().decode())
                folder, manifest = loader(spec)
                _models.append(ShardedModel(folder, manifest, spec["device"], spec["mode"], ch))
                _barrier(ch)
                ch.last = time.monotonic()
            elif op != PING:
                ch.busy_since = time.monotonic()
                _models[int(head[MODEL])].serve(op, head, payload)
                ch.busy_since = None
    except DistributedError as exc:
        die(str(exc))
    except EdgegenError as exc:
        die(f"rank {ch.rank}: {exc}")
    except MemoryError:
        die(f"rank {ch.rank} ran out of memory; the distributed run ends")
    sys.stdout.flush()
    os._exit(0)


def stop() -> None:
    """Rank 0: tell every rank to exit (at exit; a broken group is left alone)."""
    ch = _channel
    if ch is None or ch.broken or ch.rank != 0:
        return
    try:
        with ch.lock:
            ch.command([STOP])
    except DistributedError:
        pass
    ch.broken = True  # nothing more goes out


def _barrier(ch: Channel) -> None:
    ch._sum(np.zeros(1, np.float32))


class ShardedModel:
    """This rank's share of an MLX decoder. On rank 0 it is the `LanguageModel` the strategies
    drive; on the others `serve` runs rank 0's commands on it."""

    def __init__(self, folder: Path, manifest, device: str | None, mode: str, ch: Channel):
        import mlx.core as mx

        from edgegen.archs import arch_module
        from edgegen.runtimes.mlx.backend import MLXLanguageModel, select_device

        self.device = select_device(device)
        self.channel, self.group, self.id = ch, ch.group, len(_models)
        self.full_config = arch_module(manifest.architecture).parse_config(manifest.config)
        self.plan = plan_for(self.full_config, mode, ch.rank, ch.size)
        self.config = self.plan.config
        self.model = load_shard(folder, manifest, self.plan)
        mx.eval(self.model.parameters())
        self.parameter_bytes = sum(a.nbytes for _, a in _flat(self.model.parameters()))
        if mode == "tensor":
            for layer in self.model.model.layers:
                layer.reduce = self._all_sum
        self.capabilities = MLXLanguageModel.capabilities
        self.vocab_size, self.hidden_size = self.full_config.vocab_size, self.full_config.hidden_size
        self.context_length = manifest.context_length
        self.description = f"MLX ({self.device}), {mode} parallel over {ch.size} ranks"
        self._dtype = _activation_dtype(self.model)
        self._caches: dict[int, object] = {}
        self._next_cache = 0
        self._dropped: list[int] = []

    # -- rank 0: the LanguageModel interface
    def new_cache(self, kv: KVSpec | None = None):
        with self.channel.lock:
            self._flush_drops()
            cid, self._next_cache = self._next_cache, self._next_cache + 1
            bits = 0 if kv is None or kv.bits is None else kv.bits
            self._command([NEW_CACHE], cache=cid, arg=bits, group_size=kv.group_size if kv else 64)
            local = self._make_cache(kv)
        proxy = DistributedCache(self, cid, local)
        weakref.finalize(proxy, self._dropped.append, cid)
        return proxy

    def forward(self, feed: Feed, cache: "DistributedCache") -> np.ndarray:
        with self.channel.lock:
            self._flush_drops()
            header, payload = encode_feed(feed, with_inputs=self.plan.mode == "tensor")
            self._command(header, payload, cache=cache.id)
            self.channel.busy_since = time.monotonic()
            try:
                return self._run(feed, cache.local)
            except DistributedError:
                self.channel.broken = True
                raise
            finally:
                self.channel.busy_since = None

    def embed(self, tokens):
        import mlx.core as mx

        rows = self.model.model.embed_tokens(mx.array(list(tokens), dtype=mx.int32))
        return np.array(rows.astype(mx.float32))

    def truncate(self, cache: "DistributedCache", length: int) -> None:
        with self.channel.lock:
            self._flush_drops()
            self._command([TRUNCATE], cache=cache.id, arg=length)
            cache.local.truncate(length)

    def peak_memory_mb(self) -> float:
        return peak_rss_mb()

    def info(self) -> dict | None:
        """Size, mode, what each rank holds and each rank's peak memory (a collective); None once
        the group is broken."""
        if self.channel.broken:
            return None
        with self.channel.lock:
            self._flush_drops()
            self._command([STATS])
            stats = self._gather_stats()
        return {"size": self.plan.size, "mode": self.plan.mode, "ranks": stats}

    def _command(self, header: list[float], payload: np.ndarray | None = None, cache: int = 0, arg: int = 0,
                 group_size: int = 0) -> None:
        head = list(header) + [0.0] * (GROUP_SIZE + 1 - len(header))
        head[MODEL], head[CACHE], head[ARG] = self.id, cache, arg or head[ARG]
        head[GROUP_SIZE] = group_size
        try:
            self.channel.command(head, payload)
        except DistributedError:
            self.channel.broken = True
            raise

    # -- followers
    def serve(self, op: int, head: np.ndarray, payload: np.ndarray) -> None:
        if op == FORWARD:
            self._run(decode_feed(head, payload, self.hidden_size), self._caches[int(head[CACHE])])
        elif op == NEW_CACHE:
            bits = int(head[ARG])
            kv = None if not bits else KVSpec(bits=bits, group_size=int(head[GROUP_SIZE]))
            self._caches[int(head[CACHE])] = self._make_cache(kv)
        elif op == TRUNCATE:
            self._caches[int(head[CACHE])].truncate(int(head[ARG]))
        elif op == DROP:
            self._caches.pop(int(head[CACHE]), None)
        elif op == STATS:
            self._gather_stats()

    # -- every rank
    def _all_sum(self, x):
        import mlx.core as mx

        self.channel.sent_bytes += x.nbytes
        return mx.distributed.all_sum(x, group=self.group)

    def _make_cache(self, kv: KVSpec | None):
        from edgegen.runtimes.mlx.cache import make_cache

        return make_cache(self.config.num_hidden_layers, self.context_length, kv, self.config.head_dim)

    def _flush_drops(self) -> None:
        while self._dropped:
            self._command([DROP], cache=self._dropped.pop())

    def _gather_stats(self) -> list[dict]:
        row = np.zeros((self.plan.size, 3), np.float32)
        row[self.plan.rank] = (peak_rss_mb(), self.parameter_bytes / 2**20, self.channel.sent_bytes / 2**20)
        total = self.channel._sum(row.ravel()).reshape(self.plan.size, 3)
        plans = [plan_for(self.full_config, self.plan.mode, r, self.plan.size) for r in range(self.plan.size)]
        return [{"rank": r, **plans[r].describe(), "peak_memory_mb": round(float(total[r, 0]), 1),
                 "weights_mb": round(float(total[r, 1]), 2), "sent_mb": round(float(total[r, 2]), 3)}
                for r in range(self.plan.size)]

    def _run(self, feed: Feed, cache) -> np.ndarray | None:
        """This rank's part of one forward pass; logits on rank 0."""
        import mlx.core as mx

        from edgegen.runtimes.mlx.models._decoder import Step

        step = Step.of(feed, cache.length)
        rank, size = self.plan.rank, self.plan.size
        if self.plan.mode == "tensor":
            x = self.model.inputs(*_inputs(feed))
            h = self.model.model(x, cache, step)  # every layer sums its partial outputs over the group
            out = self.model.head(h, feed.row_range()) if rank == 0 else h
        else:
            if rank == 0:
                x = self.model.inputs(*_inputs(feed))
            else:
                x = _collective(lambda: mx.distributed.recv((1, feed.length, self.hidden_size), self._dtype,
                                                            rank - 1, group=self.group))
            for layer in self.model.model.layers:
                x = layer(x, cache, step)
            self.channel.sent_bytes += x.nbytes
            _collective(lambda: mx.distributed.send(x, (rank + 1) % size, group=self.group))
            if rank == 0:
                h = _collective(lambda: mx.distributed.recv_like(x, size - 1, group=self.group))
                out = self.model.head(self.model.model.norm(h), feed.row_range())
            else:
                out = x
        try:
            mx.eval(out)
        except RuntimeError as exc:
            raise failure(exc) from None
        if feed.commit:
            cache.advance(feed.length)
        return np.array(out[0].astype(mx.float32)) if rank == 0 else None


class DistributedCache:
    """Rank 0's handle on one KV cache of which every rank holds its share."""

    def __init__(self, owner: ShardedModel, cid: int, local):
        self.owner, self.id, self.local = owner, cid, local

    @property
    def length(self) -> int:
        return self.local.length

    @property
    def capacity(self) -> int:
        return self.local.capacity

    @property
    def nbytes(self) -> int:
        return self.local.nbytes

    def truncate(self, length: int) -> None:
        if length != self.local.length:
            self.owner.truncate(self, length)


# ---------------------------------------------------------------------------- commands
def encode_feed(feed: Feed, with_inputs: bool) -> tuple[list[float], np.ndarray]:
    """(header, payload) of a FORWARD command. Pipeline followers need no token ids or embeddings
    (their inputs arrive from the previous rank), only the shape, positions and attention pattern."""
    n_emb = 0 if feed.embeddings is None else len(feed.embeddings)
    row0, row1 = feed.row_range()
    hidden = feed.hidden or (-1, -1)
    parts = []
    if with_inputs:
        parts.append(np.asarray(feed.tokens, np.float32))
    if feed.positions is not None:
        parts.append(np.asarray(feed.positions, np.float32))
    if feed.blocks is not None:
        parts.append(np.asarray(feed.blocks, np.float32))
    if with_inputs and n_emb:
        parts.append(np.asarray(feed.embeddings, np.float32).ravel())
    header = [0.0] * (GROUP_SIZE + 1)
    header[OP], header[ARG], header[N_TOK], header[N_EMB] = FORWARD, int(with_inputs), len(feed.tokens), n_emb
    header[HAS_POS], header[HAS_BLOCKS] = feed.positions is not None, feed.blocks is not None
    header[HID0], header[HID1], header[COMMIT], header[ROW0], header[ROW1] = *hidden, feed.commit, row0, row1
    return header, np.concatenate(parts) if parts else np.zeros(0, np.float32)


def decode_feed(head: np.ndarray, payload: np.ndarray, hidden_size: int) -> Feed:
    n_tok, n_emb, with_inputs = int(head[N_TOK]), int(head[N_EMB]), bool(head[ARG])
    length, at = n_tok + n_emb, 0

    def take(n: int) -> np.ndarray:
        nonlocal at
        at += n
        return payload[at - n:at]

    tokens = take(n_tok).astype(np.int64).tolist() if with_inputs else [0] * n_tok
    positions = take(length).astype(np.int64).tolist() if head[HAS_POS] else None
    blocks = take(length).astype(np.int64).tolist() if head[HAS_BLOCKS] else None
    if n_emb:
        embeddings = take(n_emb * hidden_size).reshape(n_emb, hidden_size) if with_inputs \
            else np.zeros((n_emb, hidden_size), np.float32)
    else:
        embeddings = None
    hidden = None if head[HID0] < 0 else (int(head[HID0]), int(head[HID1]))
    return Feed(tokens=tokens, embeddings=embeddings, positions=positions, blocks=blocks, hidden=hidden,
                commit=bool(head[COMMIT]), rows=(int(head[ROW0]), int(head[ROW1])))


def _inputs(feed: Feed):
    import mlx.core as mx

    tokens = mx.array(np.asarray(feed.tokens, dtype=np.int32).reshape(1, -1))
    embeds = None if feed.embeddings is None else mx.array(np.asarray(feed.embeddings, np.float32))[None]
    return tokens, embeds


# ---------------------------------------------------------------------------- loading a share
def load_shard(folder: Path, manifest, plan: Plan):
    """The MLX module with this rank's local shapes and only its part of the weights."""
    import mlx.core as mx
    import mlx.nn as nn

    from edgegen.runtimes.mlx.models import model_module

    weights: dict = {}
    files = sorted(folder.glob("*.safetensors"))
    for shard in files:
        weights.update(mx.load(str(shard)))  # lazy: nothing is read until a slice is evaluated
    model = model_module(plan.config.model_type).Model(plan.config)
    if plan.mode == "pipeline":
        keep_ends = plan.rank == 0
        if not keep_ends:  # embedding, final norm and head live on rank 0
            for name in ("embed_tokens", "norm"):
                model.model.pop(name)
            if "lm_head" in model:
                model.pop("lm_head")
    quant = manifest.quantization
    if quant is not None and quant.bits:
        nn.quantize(model, group_size=quant.group_size, bits=quant.bits,
                    class_predicate=lambda path, module: hasattr(module, "to_quantized")
                    and f"{plan.global_name(path)}.scales" in weights)
    local = []
    for name, param in _flat(model.parameters()):
        source = plan.global_name(name)
        if source not in weights:
            raise ConfigError(f"{folder} has no tensor {source}; convert the model again")
        whole = weights.pop(source)
        part = shard_tensor(plan, source, whole)
        if part is not whole:  # a slice is a view that would keep the whole tensor alive: copy it out
            part = mx.contiguous(part)
        del whole
        if tuple(part.shape) != tuple(param.shape):
            raise ConfigError(f"{source} of {folder} has shape {tuple(part.shape)} where rank {plan.rank} expects "
                              f"{tuple(param.shape)}; convert the model again")
        mx.eval(part)  # one tensor at a time: the full tensor is freed once its share is taken
        local.append((name, part))
    weights.clear()
    model.load_weights(local, strict=True)
    model.eval()
    return model


def _flat(tree):
    from mlx.utils import tree_flatten

    return tree_flatten(tree)


def _activation_dtype(model):
    """The float type of the hidden states that pipeline ranks pass on (the norms' type)."""
    return model.model.layers[0].input_layernorm.weight.dtype

