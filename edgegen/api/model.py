"""`Model`: a converted model with its tokenizer, and `load()`, which finds or converts one."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from edgegen.api import completion
from edgegen.api.completion import Completion
from edgegen.api.drafts import Drafts
from edgegen.api.text import StopText, TokenGate, check_text_length
from edgegen.core.data import HELDOUT, bundled_text
from edgegen.core.diffusion import DiffusionSpec
from edgegen.core.errors import CapabilityError, ConfigError, EdgegenError
from edgegen.core.manifest import Manifest
from edgegen.core.memory import peak_rss_mb
from edgegen.core.options import DiffusionOptions, GenerateOptions, SpeculativeOptions
from edgegen.core.outputs import atomic_file
from edgegen.core.protocols import Capability, KVSpec, LanguageModel
from edgegen.core.stats import GenerationStats, ToolCall
from edgegen.decoding import block_diffusion, ngram, speculative
from edgegen.decoding.autoregressive import Session, check_prompt, generate
from edgegen.decoding.perplexity import choose_kv_bits
from edgegen.decoding.sampling import Sampler
from edgegen.grammar import constraint_for
from edgegen.tokenizer import StreamDecoder, Tokenizer
from edgegen.tools import CallFilter, chat_prompt, tool_format

KV_AUTO_FILE = "kv_auto.json"
KV_AUTO_TOKENS = 512


@dataclasses.dataclass
class Generation:
    text: str  # the reply's text (its tool calls, if any, taken out)
    token_ids: list[int]
    stats: GenerationStats

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self.stats.tool_calls


def load(model: str | Path, provider: str | None = None, *, device: str | None = None,
         threads: int | None = None, runtime: str | None = None, quant: str = "none",
         parallel: str | None = None, _draft: bool = False) -> Any:
    """Load a converted folder, or a bundled name / Hugging Face folder / hub repo id (converted
    once into edgegen's cache for `runtime`): a `Model` for language models, an
    `edgegen.images.ImageModel` for the `var` family (`quant`: q8/q4 weights for such a conversion).
    `provider` picks the ONNX Runtime execution provider
    (cpu, coreml, qnn, dml, cuda, auto); `device` the MLX device (gpu, cpu, auto).

    Under `mlx.launch` with several ranks the MLX model is sharded over them (`parallel`: "tensor",
    the default, or "pipeline"); rank 0 gets the Model, the other ranks serve it from inside this
    call until rank 0 exits, then exit."""
    from edgegen.models import locate, read_manifest
    from edgegen.runtimes.mlx import distributed

    group = None if _draft else distributed.group()
    if group is not None:
        return _load_distributed(group, str(model), provider, device, runtime, quant, parallel)
    if parallel not in (None, "tensor"):
        raise ConfigError(f"--{parallel} splits a model over the ranks of a distributed group; run under "
                          f"mlx.launch, e.g. `mlx.launch -n 2 -- edgegen chat MODEL --runtime mlx --{parallel}`")
    if device not in (None, "auto", "gpu", "cpu"):
        raise ConfigError(f"device must be gpu, cpu or auto (MLX's devices), got {device!r}")
    folder = locate(str(model), runtime, quant)
    manifest = read_manifest(folder)
    if not _draft:  # (a draft takes its target's options, whatever its own runtime)
        _check_placement(folder, manifest.runtime, provider, device)
    if manifest.family == "var":
        from edgegen.images import load_image_model

        return load_image_model(folder, manifest, provider, device=device, threads=threads)
    if manifest.source.get("layout") == "onnxruntime-genai":
        from edgegen.runtimes.onnx.genai import GenaiLanguageModel

        backend: LanguageModel = GenaiLanguageModel(folder, manifest.config, provider, threads)
    elif manifest.runtime == "onnx" and manifest.target == "npu":
        from edgegen.runtimes.onnx.npu import NpuLanguageModel

        backend = NpuLanguageModel(folder, manifest, provider, threads)
    elif manifest.runtime == "onnx":
        from edgegen.runtimes.onnx.backend import OnnxLanguageModel

        if (provider or "").lower() in ("qnn", "coreml"):
            print(f"edgegen: {folder.name} holds CPU graphs (dynamic shapes, contrib ops), of which the {provider} "
                  "provider takes few nodes; convert with --target npu for graphs an NPU runs whole", file=sys.stderr)

        backend = OnnxLanguageModel(folder, manifest, provider, threads, spinning=not _draft)
    elif manifest.runtime == "mlx":
        from edgegen.runtimes.mlx.backend import MLXLanguageModel

        backend = MLXLanguageModel(folder, manifest, device)
    else:
        raise ConfigError(f"{folder} targets runtime {manifest.runtime!r}, which this edgegen cannot run")
    tokenizer = Tokenizer(folder)
    if manifest.source.get("layout") == "onnxruntime-genai":  # genai stops at genai_config's list
        tokenizer.eos_token_ids = tuple(manifest.special_tokens["eos_token_ids"])
    model = Model(backend, tokenizer, manifest, folder)
    model.load_options = {"provider": provider, "device": device, "threads": threads}
    return model


def _check_placement(folder: Path, runtime: str, provider: str | None, device: str | None) -> None:
    """A provider picks ONNX Runtime's hardware and a device MLX's: the other runtime's is refused
    rather than ignored."""
    if runtime == "onnx" and device is not None:
        raise ConfigError(f"--device picks MLX's device, and {folder.name} runs on ONNX Runtime: pick its hardware "
                          "with --provider, or convert for MLX with --runtime mlx")
    if runtime == "mlx" and provider is not None:
        raise ConfigError(f"--provider picks ONNX Runtime's execution provider, and {folder.name} runs on MLX: pick "
                          "its device with --device, or convert for ONNX Runtime with --runtime onnx")


def _load_distributed(group, model: str, provider: str | None, device: str | None, runtime: str | None,
                      quant: str, parallel: str | None) -> "Model":
    """Rank 0: the Model over the sharded backend. Other ranks: serve rank 0, then exit."""
    from edgegen.runtimes.mlx import distributed

    if provider is not None or runtime == "onnx":
        raise ConfigError("ONNX Runtime has no distributed engine; under mlx.launch edgegen shards MLX models "
                          "only: drop --provider and use --runtime mlx (or run without mlx.launch)")
    if group.rank() != 0:
        distributed.follow(_distributed_source)  # loads what rank 0 loads; never returns
    spec = {"model": model, "runtime": runtime or "mlx", "quant": quant}
    folder, manifest = _distributed_source(spec)  # rank 0 converts first: the others find it converted
    backend = distributed.load(folder, manifest, device, parallel or "tensor", spec)
    loaded = Model(backend, Tokenizer(folder), manifest, folder)
    loaded.load_options = {"provider": None, "device": device, "threads": None}
    return loaded


def _distributed_source(spec: dict) -> tuple[Path, Manifest]:
    from edgegen.models import locate, read_manifest

    folder = locate(spec["model"], spec["runtime"], spec["quant"])
    manifest = read_manifest(folder)
    if manifest.runtime != "mlx" or manifest.family not in ("ar", "dllm"):
        raise ConfigError(f"{folder} is {'a VAR image model' if manifest.family == 'var' else 'an ONNX model'}; "
                          "under mlx.launch edgegen shards MLX language models: convert with --runtime mlx")
    return folder, manifest


class Model:
    """A converted model with its tokenizer. One KV cache is kept and its longest shared prefix
    reused between calls, so a chat continues without re-reading the conversation."""

    def __init__(self, backend: LanguageModel, tokenizer: Tokenizer, manifest: Manifest,
                 folder: Path | None = None):
        self.backend, self.tokenizer, self.manifest, self.folder = backend, tokenizer, manifest, folder
        self.load_options: dict[str, Any] = {}
        self.session = Session(backend)
        self._drafts = Drafts(self, load)
        self._fingerprint: str | None = None
        self._lock = threading.Lock()
        self._owner: int | None = None

    # ------------------------------------------------------------------ public calls (locked)
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """float32 logits (len(token_ids), vocab) of one fresh forward pass."""
        ids = self._check_ids(token_ids)
        with self._locked():
            return Session(self.backend).feed(ids, last_only=False)

    def reset(self) -> None:
        """Forget the conversation: the KV cache, and the draft model's cache if there is one."""
        with self._locked():
            self.session.reset()
            for drafter in self._drafts.cache.values():
                if hasattr(drafter, "session"):
                    drafter.session.reset()

    def generate(self, prompt: str | Sequence[int], options: GenerateOptions | None = None,
                 **kwargs: Any) -> Generation:
        """Generate after `prompt` (text, or token ids). Options, as keywords or one
        `GenerateOptions`: sampling (temperature, top_p, ...), speculative decoding (draft, ...),
        the KV cache (kv_bits, ...), diffusion LLMs (block_size, rule, ...); `GenerateOptions.keys()`."""
        stats, pieces, ids = GenerationStats(), [], []
        for piece in self._stream(prompt, options, kwargs, stats, ids):
            pieces.append(piece)
        return Generation("".join(pieces), ids, stats)

    def stream(self, prompt: str | Sequence[int], options: GenerateOptions | None = None, *,
               stats: GenerationStats | None = None, **kwargs: Any) -> Iterator[str]:
        """Yield text pieces as they are generated; `stats` (if given) is filled as it goes."""
        return self._stream(prompt, options, kwargs, stats if stats is not None else GenerationStats(), None)

    def chat(self, messages: Iterable[dict[str, Any]], options: GenerateOptions | None = None,
             **kwargs: Any) -> Generation:
        """Reply to `messages` ([{"role": ..., "content": ...}]) using the model's chat template.
        With `tools` (OpenAI's function list) and `tool_choice`, the reply's calls are in
        `.tool_calls` (and `stats.finish_reason` is "tool_calls"); feed results back as
        {"role": "tool", "tool_call_id": ..., "content": ...} after the assistant's message."""
        options = GenerateOptions.from_kwargs(options, **kwargs)
        return self.generate(self.encode_chat(messages, options), options)

    def stream_chat(self, messages: Iterable[dict[str, Any]], options: GenerateOptions | None = None, *,
                    stats: GenerationStats | None = None, **kwargs: Any) -> Iterator[str]:
        """The reply's text as it comes; tool calls land in `stats.tool_calls` at the end."""
        options = GenerateOptions.from_kwargs(options, **kwargs)
        return self.stream(self.encode_chat(messages, options), options, stats=stats)

    def encode_chat(self, messages: Iterable[dict[str, Any]], options: GenerateOptions | None = None) -> list[int]:
        """The prompt ids of `messages` as the chat template renders them, with `options`' tools."""
        messages, extra = chat_prompt(messages, (options or GenerateOptions()).output, self.tokenizer.chat_template)
        check_text_length(sum(len(m.get("content") or "") if isinstance(m.get("content"), str) else 0
                              for m in messages), self.backend.context_length)
        return self.tokenizer.encode_chat(messages, **extra)

    def complete(self, prompt: str | Sequence[int], options: GenerateOptions | None = None,
                 **kwargs: Any) -> Completion:
        """k completion drafts of `prompt` from one pass (Superposed Decoding): `drafts` (k),
        `ngram` (a store folder, "none", or the model's own), `ngram_weight`, `max_tokens`."""
        last = None
        for last in self.stream_complete(prompt, options, **kwargs):
            pass
        return last

    def stream_complete(self, prompt: str | Sequence[int], options: GenerateOptions | None = None,
                        **kwargs: Any) -> Iterator[Completion]:
        """The drafts after every step, for an app that shows them as they grow."""
        if self.manifest.family != "ar":
            raise ConfigError(f"superposed drafts (`complete`) are decoded left to right by an autoregressive model; "
                              f"this model is a diffusion LLM ({self.manifest.architecture}): use generate or chat")
        if options is None:
            kwargs.setdefault("max_tokens", 16)  # completions are short
        options = GenerateOptions.from_kwargs(options, **kwargs)
        if options.output.logprobs is not None or options.output.tools:
            raise ConfigError("logprobs and tools are not offered for superposed drafts (`complete`); "
                              "use generate or chat")
        if options.output.constrained and options.ignore_eos:
            raise ConfigError("ignore_eos cannot be combined with a JSON schema, regex or grammar: the output "
                              "ends where its grammar does")
        ids = self._encode(prompt)
        stats = GenerationStats()
        with self._locked():
            store = completion.store_for(options.superposed.ngram, self.folder, self.backend.vocab_size,
                                         self._ngram_fingerprint)
            yield from completion.run(self._session_for(options), self.tokenizer, self.backend.vocab_size, store,
                                      ids, options, stats)
            self._record_peak(stats)

    # ------------------------------------------------------------------ internals
    def _ngram_fingerprint(self) -> str:
        """The tokenizer's fingerprint, as n-gram stores record it (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = ngram.fingerprint(self.tokenizer.vocabulary())
        return self._fingerprint

    def _session_for(self, options: GenerateOptions) -> Session:
        """The kept session, made again when `options` ask for another KV-cache precision."""
        kv = self._kv_spec(options)
        if self.session.kv != kv:  # another cache precision: the old cache (and its graph) go first
            old = self.session.kv
            self.session = None
            try:
                self.session = Session(self.backend, kv)
            except BaseException:
                self.session = Session(self.backend, old)
                raise
        return self.session

    def _stream(self, prompt: str | Sequence[int], options: GenerateOptions | None, kwargs: dict[str, Any],
                stats: GenerationStats, token_sink: list[int] | None) -> Iterator[str]:
        """Checks arguments now (errors surface at the call), then generates under the lock."""
        options = GenerateOptions.from_kwargs(options, **kwargs)
        ids = self._encode(prompt)
        check_prompt(ids, self.backend.context_length, options.max_tokens)  # too long: an error now, not later
        sampler = self._sampler(ids, options)  # a grammar that does not compile: an error now too
        return self._locked_stream(ids, options, sampler, stats, token_sink)

    def _locked_stream(self, ids: list[int], options: GenerateOptions, sampler: Sampler, stats: GenerationStats,
                       token_sink: list[int] | None) -> Iterator[str]:
        with self._locked():
            yield from self._stream_ids(ids, options, sampler, stats, token_sink)

    def _stream_ids(self, ids: list[int], options: GenerateOptions, sampler: Sampler, stats: GenerationStats,
                    token_sink: list[int] | None) -> Iterator[str]:
        decoder = StreamDecoder(self.tokenizer)
        text = StopText(list(options.stop))
        calls = self._call_filter(options)
        gate = TokenGate(stats.logprobs) if options.output.logprobs is not None else None
        tokens = self._tokens(ids, options, sampler, stats, lambda _: text.hit)
        try:
            for n, token in enumerate(tokens):
                if token_sink is not None:
                    token_sink.append(token)
                decoded = decoder.push(token)
                shown = text.push(decoded)
                if gate is not None:
                    gate.push(sampler.decided[len(ids) + n], len(decoded), len(shown))
                piece = calls.push(shown)
                if piece:
                    yield piece
            decoded = decoder.flush()
            shown = text.push(decoded, final=True)
            if gate is not None:
                gate.finish(len(shown), cut=text.hit)
            tail = calls.push(shown)
            rest, stats.tool_calls = calls.finish(cut_short=stats.finish_reason == "length")
            if stats.tool_calls:
                stats.finish_reason = "tool_calls"
            if tail + rest:
                yield tail + rest
        finally:
            tokens.close()
            self._record_peak(stats)

    def _call_filter(self, options: GenerateOptions) -> "CallFilter | _PassThrough":
        """What splits the reply into text and tool calls (nothing to split without tools)."""
        output = options.output
        if not output.calls_possible:
            return _PassThrough()
        return CallFilter(tool_format(self.tokenizer.chat_template), [t["name"] for t in output.tools])

    def _record_peak(self, stats: GenerationStats) -> None:
        """The process's peak RSS, or the accelerator's peak where the runtime reports one (Metal)."""
        stats.peak_memory_mb = max(peak_rss_mb(), getattr(self.backend, "peak_memory_mb", lambda: 0.0)())
        if hasattr(self.backend, "info"):  # sharded over a group: every rank's figures
            stats.distributed = self.backend.info()

    def _sampler(self, ids: list[int], options: GenerateOptions) -> Sampler:
        """The sampler of one generation: its settings, the output constraint, log-probabilities."""
        output = options.output
        if self.manifest.family == "dllm" and (output.constrained or output.logprobs is not None):
            raise ConfigError("structured output and logprobs apply to autoregressive models; a diffusion LLM "
                              "commits tokens out of order, which a grammar cannot follow")
        if output.constrained and options.ignore_eos:
            raise ConfigError("ignore_eos cannot be combined with a JSON schema, regex or grammar: the output "
                              "ends where its grammar does")
        stop_ids = self.tokenizer.eos_token_ids
        constraint = constraint_for(output, self.tokenizer, self.backend.vocab_size, stop_ids, len(ids))
        return Sampler(options.sampling, constraint, output.logprobs)

    def _tokens(self, ids: list[int], options: GenerateOptions, sampler: Sampler, stats: GenerationStats,
                should_stop) -> Iterator[int]:
        """The token stream of the strategy `options` ask for, over the kept (prefix-reusing) cache."""
        kv = self._session_for(options).kv
        stop_ids = () if options.ignore_eos else self.tokenizer.eos_token_ids
        common = dict(max_tokens=options.max_tokens, stop_ids=stop_ids, stats=stats, should_stop=should_stop)
        if self.manifest.family == "dllm":
            if options.speculative != SpeculativeOptions():
                raise ConfigError("a diffusion LLM decodes blocks in parallel; --draft, --num-draft and --max-draft "
                                  "(speculative decoding) apply to autoregressive models")
            return block_diffusion.generate(self.session, ids, sampler, self._diffusion_plan(options), **common)
        if options.diffusion != DiffusionOptions():
            raise ConfigError("--block-size, --threshold, --rule, --steps, --dllm-cache and --refresh-every apply to "
                              "diffusion LLMs; this model is autoregressive")
        spec = options.speculative
        if spec.draft is None:
            return generate(self.session, ids, sampler, **common)
        drafter = self._drafts.get(spec.draft, kv)
        draft_length = self._drafts.draft_length(spec, kv, options.sampling)
        return speculative.generate(self.session, drafter, ids, sampler, draft_length=draft_length, **common)

    def _diffusion_plan(self, options: GenerateOptions):
        d = options.diffusion
        spec = DiffusionSpec.from_dict(self.manifest.diffusion)
        return block_diffusion.plan(spec, block_size=d.block_size, rule=d.rule, threshold=d.threshold,
                                    steps=d.steps, cache=d.dllm_cache, refresh_every=d.refresh_every)

    def kv_bytes_per_token(self, kv: KVSpec | None) -> float:
        """What the KV cache `kv` costs per token on this model's runtime."""
        from edgegen.runtimes.kv_layout import FLOAT_BYTES, kv_bytes_per_token

        c, m = self.backend.config, self.manifest
        float_bytes = 4 if m.runtime == "onnx" else FLOAT_BYTES.get(m.dtype, 4)
        return kv_bytes_per_token(m.runtime, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, kv, float_bytes)

    def kv_spec(self, options: GenerateOptions) -> KVSpec | None:
        """The cache precision `options` ask for ("auto" resolved for this model)."""
        with self._locked():
            return self._kv_spec(options)

    def _kv_spec(self, options: GenerateOptions) -> KVSpec | None:
        bits = options.kv.kv_bits
        if bits == "auto":
            bits = self._auto_kv_bits()
        return None if bits is None else KVSpec(bits=bits, group_size=options.kv.kv_group_size)

    def _auto_kv_bits(self) -> int | None:
        """The smallest KV precision within 1% of the float cache's perplexity on the bundled text,
        measured once per converted model and remembered next to it (`kv_auto.json`)."""
        record = self.folder / KV_AUTO_FILE if self.folder else None
        if record is not None and record.is_file():
            try:
                bits = json.loads(record.read_text(encoding="utf-8"))["kv_bits"]
                if bits in (None, 16, 8, 4) and not isinstance(bits, bool):
                    return bits
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable or damaged: measured again
        if not Capability.QUANTIZED_KV & getattr(self.backend, "capabilities", Capability.NONE):  # before measuring
            raise CapabilityError(f"{getattr(self.backend, 'description', 'this model')} keeps a float KV cache; "
                                  "--kv-bits (auto included) needs a model edgegen converted for its CPU graphs or MLX")
        text = bundled_text(HELDOUT)
        ids = [i for i in self.tokenizer.encode(text) if i < self.backend.vocab_size][:KV_AUTO_TOKENS]
        print("edgegen: measuring which KV precision keeps perplexity within 1% (once per model)", file=sys.stderr)
        choice = choose_kv_bits(self.backend, ids, tolerance=0.01)
        if record is not None:
            try:
                with atomic_file(record) as tmp:
                    tmp.write_text(json.dumps(choice, indent=2) + "\n", encoding="utf-8")
            except OSError:
                print(f"edgegen: could not save {record}; the choice holds for this process only", file=sys.stderr)
        return choice["kv_bits"]

    def _locked(self):
        return _OwnedLock(self)

    def _encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            check_text_length(len(prompt), self.backend.context_length)
            ids = self.tokenizer.encode(prompt)
            if not ids:
                raise ConfigError("the prompt is empty: give at least one token")
            return self._check_ids(ids)
        return self._check_ids(prompt)

    def _check_ids(self, token_ids: Any) -> list[int]:
        """Token ids from a caller: integers in [0, vocabulary); anything else is a one-line error."""
        if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Iterable):
            raise ConfigError(f"token ids must be a list of integers, got {type(token_ids).__name__}")
        ids = list(token_ids)
        vocab = self.backend.vocab_size
        for i in ids:
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
                raise ConfigError(f"token ids must be integers, got {i!r}")
            if not 0 <= i < vocab:
                raise ConfigError(f"token id {i} is outside the vocabulary [0, {vocab}); "
                                  "check the ids (or the tokenizer they came from)")
        if not ids:
            raise ConfigError("the prompt is empty: give at least one token")
        return [int(i) for i in ids]


class _PassThrough:
    def push(self, piece: str) -> str:
        return piece

    def finish(self, cut_short: bool = False) -> tuple[str, list[ToolCall]]:
        return "", []


class _OwnedLock:
    """The model's lock, with a clear error (not a deadlock) when the thread that holds it asks
    again, e.g. by calling `generate` while one of its own streams is still open."""

    def __init__(self, model: Model):
        self.model = model

    def __enter__(self) -> None:
        me = threading.get_ident()
        if self.model._owner == me:
            raise EdgegenError("this Model is already generating in this thread (an unfinished stream?); "
                               "finish or close() it first")
        self.model._lock.acquire()
        self.model._owner = me

    def __exit__(self, *exc: object) -> None:
        self.model._owner = None
        self.model._lock.release()
