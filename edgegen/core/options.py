"""The one options object shared by `Model.generate`/`stream`/`chat`, the CLI and the server.

Flat keyword arguments (`temperature=0.7, draft="q4", kv_bits=8`) or a JSON body map onto it with
`GenerateOptions.from_kwargs`; every value is checked here, at the edge, with one clear message.
Strategies read the part that concerns them (`sampling`, `speculative`, `kv`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from edgegen.core.errors import ConfigError

MAX_SEED = 2**63 - 1


def _number(name: str, value: Any, kind: type, low: float | None = None, high: float | None = None,
            low_open: bool = False, hint: str = "") -> Any:
    """`value` as `kind` if it is a finite number within [low, high] (or (low, high]); else ConfigError."""
    what = "an integer" if kind is int else "a number"
    bad_type = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad_type or (isinstance(value, float) and (not math.isfinite(value)
                                                  or (kind is int and not value.is_integer()))):
        raise ConfigError(f"{name} must be {what}, got {value!r}{hint}")
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        span = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"{name} must be in {span}, got {value!r}{hint}")
    return kind(value)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "temperature", _number("temperature", self.temperature, float, 0, 1e6, hint=" (0 is greedy)"))
        set_(self, "top_p", _number("top_p", self.top_p, float, 0, 1, low_open=True))
        set_(self, "top_k", _number("top_k", self.top_k, int, 0, 2**31 - 1, hint=" (0 turns it off)"))
        set_(self, "min_p", _number("min_p", self.min_p, float, 0, 1))
        if self.min_p >= 1:
            raise ConfigError(f"min_p must be below 1, got {self.min_p!r}")
        set_(self, "repetition_penalty", _number("repetition_penalty", self.repetition_penalty, float, 0, 1e6,
                                                 low_open=True, hint=" (1 turns it off)"))
        if self.seed is not None:
            set_(self, "seed", _number("seed", self.seed, int, 0, MAX_SEED))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


DRAFT_KINDS = ("q4", "q8", "prompt-lookup")  # besides a model name or folder


@dataclasses.dataclass(frozen=True)
class SpeculativeOptions:
    draft: str | None = None  # a model (name or folder), "q4"/"q8" (a quantized copy), "prompt-lookup"
    num_draft: int | str = "auto"  # tokens drafted per verification, or "auto" (chosen from measured costs)
    max_draft: int = 8  # the bound of "auto"

    def __post_init__(self) -> None:
        if self.draft is not None and (not isinstance(self.draft, str) or not self.draft.strip()):
            raise ConfigError(f"draft must be a model, {', '.join(DRAFT_KINDS)}; got {self.draft!r}")
        if self.num_draft != "auto":
            object.__setattr__(self, "num_draft", _number("num_draft", self.num_draft, int, 0, 64,
                                                          hint=" (or \"auto\")"))
        object.__setattr__(self, "max_draft", _number("max_draft", self.max_draft, int, 1, 64))
        if self.draft is None and (self.num_draft != "auto" or self.max_draft != 8):
            name = "num_draft" if self.num_draft != "auto" else "max_draft"
            raise ConfigError(f"{name} applies to speculative decoding; give a draft (--draft) or drop it")


@dataclasses.dataclass(frozen=True)
class KVOptions:
    kv_bits: int | str | None = None  # None: the runtime's float cache; 16, 8, 4 or "auto"
    kv_group_size: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.kv_bits, float) and self.kv_bits in (16, 8, 4):  # JSON clients send 8.0
            object.__setattr__(self, "kv_bits", int(self.kv_bits))
        if self.kv_bits not in (None, 16, 8, 4, "auto") or isinstance(self.kv_bits, bool) \
                or isinstance(self.kv_bits, float):
            raise ConfigError(f"kv_bits must be 16, 8, 4 or auto, got {self.kv_bits!r}")
        if isinstance(self.kv_group_size, float) and self.kv_group_size in (32, 64, 128):
            object.__setattr__(self, "kv_group_size", int(self.kv_group_size))
        if self.kv_group_size not in (32, 64, 128) or isinstance(self.kv_group_size, (bool, float)):
            raise ConfigError(f"kv_group_size must be 32, 64 or 128, got {self.kv_group_size!r}")


MAX_STOPS, MAX_STOP_CHARS = 64, 1000
MAX_SCHEMA_DEPTH = 256


def _depth(value: Any) -> int:
    """How deeply lists and dicts nest in `value`, without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if level + 1 > MAX_SCHEMA_DEPTH:
                    return level + 1
                deepest = max(deepest, level + 1)
                todo.append((child, level + 1))
    return deepest if isinstance(value, (dict, list)) else 0


DLLM_RULES = ("fixed", "threshold", "factor", "dynamic", "entropy_bounded", "first_hitting", "origin",
              "maskgit_plus", "topk_margin", "entropy")
DLLM_CACHES = ("block", "dual", "prefix", "none")


@dataclasses.dataclass(frozen=True)
class DiffusionOptions:
    """Block-diffusion decoding of diffusion LLMs; None takes the model family's default."""

    block_size: int | None = None
    threshold: float | None = None  # confidence for the threshold / dynamic rules
    rule: str | None = None  # see edgegen.decoding.commit_rules
    steps: int | None = None  # forwards per block the quota / timestep schedules use (default: block size)
    dllm_cache: str | None = None  # block-causal: block | none; bidirectional: dual | prefix | none
    refresh_every: int = 0  # bidirectional caches: also refresh every N forwards (0: at block starts only)

    def __post_init__(self) -> None:
        if self.block_size is not None:
            object.__setattr__(self, "block_size", _number("block_size", self.block_size, int, 1, 4096))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", _number("threshold", self.threshold, float, 0, 1))
        if self.rule is not None and self.rule not in DLLM_RULES:
            raise ConfigError(f"rule must be one of {', '.join(DLLM_RULES)}, got {self.rule!r}")
        if self.steps is not None:
            object.__setattr__(self, "steps", _number("steps", self.steps, int, 1, 4096))
        if self.dllm_cache is not None and self.dllm_cache not in DLLM_CACHES:
            raise ConfigError(f"dllm_cache must be one of {', '.join(DLLM_CACHES)}, got {self.dllm_cache!r}")
        object.__setattr__(self, "refresh_every", _number("refresh_every", self.refresh_every, int, 0, 4096))


@dataclasses.dataclass(frozen=True)
class SuperposedOptions:
    """`complete`: k drafts from one pass (Superposed Decoding)."""

    drafts: int = 3
    ngram: str | None = None  # an n-gram store folder, "none", or None: the model's own store if it has one
    ngram_weight: float | None = None  # None: the released weight for this number of drafts

    def __post_init__(self) -> None:
        object.__setattr__(self, "drafts", _number("drafts", self.drafts, int, 1, 64))
        if self.ngram is not None and (not isinstance(self.ngram, str) or not self.ngram.strip()):
            raise ConfigError(f"ngram must be a store folder or none, got {self.ngram!r}")
        if self.ngram_weight is not None:
            object.__setattr__(self, "ngram_weight", _number("ngram_weight", self.ngram_weight, float, 0, 1))


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """What the output must be (constrained decoding) and what is reported with it.

    At most one of `json_schema` (a JSON Schema as a dict or JSON text; {"type": "object"} is any
    JSON object), `regex` (the whole output matches it) and `grammar` (Lark, or GBNF as llama.cpp
    writes it). `logprobs`: None for none, else how many most likely alternatives (0-20) come with
    each generated token's log-probability.

    `tools`: functions the model may call, in OpenAI's shape ({"type": "function", "function":
    {"name", "description", "parameters"}}; the inner object alone is accepted too); `tool_choice`:
    "auto" (the default: text or calls), "none" (text; the tools are left out of the prompt),
    "required" (at least one call) or one function ({"type": "function", "function": {"name"}} or
    its name); `parallel_tool_calls`: whether a reply may hold more than one call (off by default,
    as in llama.cpp's server: small models otherwise call on until max_tokens)."""

    json_schema: dict | str | None = None
    regex: str | None = None
    grammar: str | None = None
    logprobs: int | None = None
    tools: tuple | list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool = False

    def __post_init__(self) -> None:
        given = [name for name in ("json_schema", "regex", "grammar") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ConfigError(f"give one output constraint, not {' and '.join(given)}")
        if isinstance(self.json_schema, str):
            try:
                object.__setattr__(self, "json_schema", json.loads(self.json_schema))
            except (ValueError, RecursionError) as exc:
                raise ConfigError(f"json_schema is not valid JSON ({str(exc)[:200]})") from None
        if self.json_schema is not None and not isinstance(self.json_schema, (dict, bool)):
            raise ConfigError(f"json_schema must be a JSON object (a JSON Schema), got {self.json_schema!r:.60}")
        if _depth(self.json_schema) > MAX_SCHEMA_DEPTH:  # the grammar compiler recurses (and crashed past ~4,000)
            raise ConfigError(f"json_schema is nested more than {MAX_SCHEMA_DEPTH} levels deep; flatten it")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{name} must be a non-empty string, got {value!r:.60}")
        if self.logprobs is not None:
            object.__setattr__(self, "logprobs", _number("logprobs", self.logprobs, int, 0, 20,
                                                         hint=" (how many alternatives per token)"))
        self._check_tools(given)

    def _check_tools(self, constraints: list[str]) -> None:
        if not isinstance(self.parallel_tool_calls, bool):
            raise ConfigError(f"parallel_tool_calls must be true or false, got {self.parallel_tool_calls!r}")
        if self.tools is None:
            if self.tool_choice not in (None, "none", "auto"):
                raise ConfigError("tool_choice needs tools: give the functions the model may call")
            return
        tools = tuple(_function(t, i) for i, t in enumerate(_listed(self.tools)))
        names = [t["name"] for t in tools]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"tools name {twice[0]!r} more than once; give each function its own name")
        object.__setattr__(self, "tools", tools)
        choice = self.tool_choice if self.tool_choice is not None else "auto"
        if isinstance(choice, dict):
            function = choice.get("function")
            choice = function.get("name") if isinstance(function, dict) else None
            if not isinstance(choice, str):
                raise ConfigError('tool_choice must be "auto", "none", "required" or '
                                  '{"type": "function", "function": {"name": NAME}}')
        if not isinstance(choice, str):
            raise ConfigError(f"tool_choice must be auto, none, required or a function's name, got {choice!r:.60}")
        if choice not in ("auto", "none", "required") and choice not in names:
            raise ConfigError(f"tool_choice names {choice!r}, which is not among the tools ({', '.join(names)})")
        object.__setattr__(self, "tool_choice", choice)
        if constraints and self.calls_possible:
            raise ConfigError(f"give either tools or {constraints[0]}, not both (set tool_choice to none "
                              "to answer in the schema)")

    @property
    def calls_possible(self) -> bool:
        """Whether tool calls may come out of this generation (tools given, tool_choice not none)."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def constrained(self) -> bool:
        return (self.json_schema is not None or self.regex is not None or self.grammar is not None
                or self.calls_possible)


def _listed(tools: Any) -> list:
    if isinstance(tools, (str, bytes, dict)) or not isinstance(tools, (list, tuple)) or not tools:
        raise ConfigError("tools must be a non-empty list of functions "
                          '({"type": "function", "function": {"name": ..., "parameters": {...}}})')
    return list(tools)


def _function(tool: Any, i: int) -> dict:
    """One tool as {"name", "description", "parameters"}: OpenAI's wrapper or the function itself."""
    where = f"tools[{i}]"
    if isinstance(tool, dict) and tool.get("type", "function") != "function":
        raise ConfigError(f"{where} has type {tool.get('type')!r}; only function tools are offered")
    if isinstance(tool, dict) and "function" in tool:
        tool = tool["function"]
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
        raise ConfigError(f"{where} must be a function with a name: "
                          '{"type": "function", "function": {"name": ..., "parameters": {...}}}')
    if not all(c.isalnum() or c in "_-." for c in tool["name"]) or len(tool["name"]) > 64:
        raise ConfigError(f"{where}: a function name has at most 64 letters, digits, _, - or . "
                          f"(got {tool['name']!r:.70})")
    parameters = tool.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict):
        raise ConfigError(f"{where}.parameters must be a JSON Schema object")
    description = tool.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}.description must be a string")
    return {"name": tool["name"], "description": description, "parameters": parameters}


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """Everything a generation call can be asked for."""

    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    sampling: SamplingParams = SamplingParams()
    speculative: SpeculativeOptions = SpeculativeOptions()
    kv: KVOptions = KVOptions()
    diffusion: DiffusionOptions = DiffusionOptions()
    superposed: SuperposedOptions = SuperposedOptions()
    output: OutputOptions = OutputOptions()

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_tokens", _number("max_tokens", self.max_tokens, int, 1, 2**31 - 1))
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
            raise ConfigError(f"stop must be a string or a list of strings, got {self.stop!r:.80}")
        if len(stop) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stop):  # each is searched at every token
            raise ConfigError(f"stop takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters, got "
                              f"{len(stop)} (longest {max(map(len, stop))})")
        object.__setattr__(self, "stop", tuple(stop))
        if not isinstance(self.ignore_eos, bool):
            raise ConfigError(f"ignore_eos must be true or false, got {self.ignore_eos!r}")

    @classmethod
    def from_kwargs(cls, base: "GenerateOptions | None" = None, **kwargs: Any) -> "GenerateOptions":
        """Flat keyword arguments (those of `keys()`) over `base` (or the defaults)."""
        if base is not None and not isinstance(base, cls):
            raise ConfigError(f"options must be a GenerateOptions, got {type(base).__name__}; or give them as "
                              "keywords (generate(prompt, max_tokens=32))")
        base = base or cls()
        unknown = sorted(set(kwargs) - set(cls.keys()))
        if unknown:
            raise ConfigError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                              f"known: {', '.join(cls.keys())}")
        groups = _GROUPS
        changes: dict[str, Any] = {}
        for group, klass in groups.items():
            fields = {f.name for f in dataclasses.fields(klass)}
            picked = {k: v for k, v in kwargs.items() if k in fields}
            if picked:
                changes[group] = dataclasses.replace(getattr(base, group), **picked)
        changes.update({k: v for k, v in kwargs.items() if k in _TOP_LEVEL})
        return dataclasses.replace(base, **changes)

    @staticmethod
    def keys() -> list[str]:
        return list(_TOP_LEVEL) + [f.name for group in _GROUPS.values() for f in dataclasses.fields(group)]

    def flat(self) -> dict:
        """The flat keyword form (what `from_kwargs` takes)."""
        out = {k: getattr(self, k) for k in _TOP_LEVEL}
        for group in _GROUPS:
            out.update(dataclasses.asdict(getattr(self, group)))
        return out


_TOP_LEVEL = ("max_tokens", "stop", "ignore_eos")
_GROUPS = {"sampling": SamplingParams, "speculative": SpeculativeOptions, "kv": KVOptions,
           "diffusion": DiffusionOptions, "superposed": SuperposedOptions, "output": OutputOptions}
