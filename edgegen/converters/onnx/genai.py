"""`genai_config.json`: what onnxruntime-genai needs to run `model.genai.onnx` (and so its C, C#,
Java and Objective-C packages): the model type, the graph's input and output names, the context,
EOS/BOS/pad, and search defaults from the checkpoint's generation_config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgegen.archs._decoder import DecoderConfig

CONFIG_FILE = "genai_config.json"
GENAI_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}


def write_genai_config(folder: Path, c: DecoderConfig, graph: str, special: dict[str, Any],
                       generation: dict[str, Any]) -> str | None:
    """Write genai_config.json for `graph`; None (nothing written) for a model type genai lacks."""
    kind = GENAI_TYPES.get(c.model_type)
    if kind is None:
        return None
    eos = special.get("eos_token_ids") or []
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": graph, "head_size": c.head_dim, "hidden_size": c.hidden_size,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
        "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
        "num_key_value_heads": c.num_key_value_heads,
    }
    pad = generation.get("pad_token_id", eos[0] if eos else 0)
    model = {"bos_token_id": special.get("bos_token_id") or 0, "context_length": c.context_length,
             "decoder": decoder, "eos_token_id": eos if len(eos) != 1 else eos[0],
             "pad_token_id": pad[0] if isinstance(pad, list) else pad, "type": kind, "vocab_size": c.vocab_size}
    search = {"do_sample": bool(generation.get("do_sample", False)), "max_length": c.context_length,
              "min_length": 0, "num_beams": 1, "num_return_sequences": 1,
              "past_present_share_buffer": True,  # GroupQueryAttention writes into the past buffer in place
              "repetition_penalty": float(generation.get("repetition_penalty", 1.0)),
              "temperature": float(generation.get("temperature", 1.0)),
              "top_k": int(generation.get("top_k", 50)), "top_p": float(generation.get("top_p", 1.0))}
    (folder / CONFIG_FILE).write_text(json.dumps({"model": model, "search": search}, indent=4) + "\n",
                                      encoding="utf-8")
    return CONFIG_FILE
