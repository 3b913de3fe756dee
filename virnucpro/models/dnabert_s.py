"""DNABERT-S in plain PyTorch, written from its architecture (no remote code).

DNABERT-S (Zhou et al. 2024) is a DNABERT-2 encoder, itself a MosaicBERT:
  - embeddings: word + token-type (no position embeddings), then LayerNorm;
  - attention: fused ``Wqkv`` projection, symmetric ALiBi bias
    ``-slope_h * |i - j|`` with the standard per-head slopes, output
    projection, residual and post-LayerNorm;
  - feed-forward: gated GELU (exact erf GELU on the first half of
    ``gated_layers``, times the second half), ``wo``, residual, post-LayerNorm;
  - pooler: dense + tanh on the first token, as the published ``BertModel``.

Modules are named after the keys of the published ``pytorch_model.bin``
(``encoder.layer.N.attention.self.Wqkv``, ``encoder.layer.N.mlp.gated_layers``,
...), so that the checkpoint maps onto this model key for key. Attention runs
through ``scaled_dot_product_attention`` with the ALiBi and padding bias built
for the batch's length, so any length and fp16/bf16 on CUDA work without Triton.
"""
from __future__ import annotations

import functools
import math
from dataclasses import MISSING, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class DnabertConfig:
    """The ``config.json`` fields the architecture uses (DNABERT-S: 4096, 768,
    12, 12, 3072; the last two have BERT's defaults)."""
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def missing(cls, config: dict) -> list[str]:
        """The required fields ``config`` lacks."""
        return [f.name for f in fields(cls) if f.default is MISSING and f.name not in config]

    @classmethod
    def from_dict(cls, config: dict) -> DnabertConfig:
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})


@functools.lru_cache(maxsize=8)
def alibi_slopes(heads: int, device: torch.device) -> torch.Tensor:
    """The standard ALiBi slopes (Press et al.), fp32 on ``device``: a geometric
    series for a power of two heads; otherwise the nearest power of two's
    series, completed with every other slope of the next power's series.
    Made once per device (a copy to the GPU in every forward would wait for it)."""
    def geometric(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        slopes = geometric(heads)
    else:
        nearest = 2 ** math.floor(math.log2(heads))
        slopes = geometric(nearest) + geometric(2 * nearest)[0::2][:heads - nearest]
    return torch.tensor(slopes, dtype=torch.float32).to(device)


@functools.lru_cache(maxsize=32)
def alibi(heads: int, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[heads, length, length]`` ALiBi bias ``-slope_h * |i - j|``, computed in fp32 once per length, device
    and dtype (a GPU run sees a few batch widths, multiples of 8: see ``engine.BatchShapes``)."""
    positions = torch.arange(length, device=device)
    distance = (positions[None, :] - positions[:, None]).abs()
    return (-alibi_slopes(heads, device)[:, None, None] * distance).to(dtype)


def attention_bias(heads: int, attention_mask: torch.Tensor | None, length: int, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    """The additive attention bias of a batch: ALiBi for its length, broadcast over its rows when none is
    padded (``attention_mask`` None), else ``[batch, heads, length, length]`` with -inf on padded keys
    (every row keeps its unpadded keys)."""
    if attention_mask is None:
        return alibi(heads, length, device, dtype)[None]
    padded_key = ~attention_mask.bool()[:, None, None, :]            # [batch, 1, 1, length]
    return alibi(heads, length, device, torch.float32)[None].masked_fill(padded_key, float("-inf")).to(dtype)


class DnabertEmbeddings(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # every token is of type 0, as in the published extraction
        return self.LayerNorm(self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0])


class AlibiSelfAttention(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden.shape
        # Wqkv's output is laid out (q | k | v), each (head, head_dim)
        query, key, value = self.Wqkv(hidden).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        return context.transpose(1, 2).reshape(batch, length, width)


class AttentionOutput(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(context))


class Attention(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.self = AlibiSelfAttention(config)       # checkpoint name: attention.self
        self.output = AttentionOutput(config)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, bias), hidden)


class GatedGeluMLP(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate, value = self.gated_layers(hidden).chunk(2, dim=-1)
        return self.layernorm(hidden + self.wo(F.gelu(gate) * value))


class DnabertLayer(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.attention = Attention(config)
        self.mlp = GatedGeluMLP(config)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attention(hidden, bias))


class Pooler(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class DnabertModel(nn.Module):
    """``model(input_ids, attention_mask)`` returns ``(last_hidden_state,
    pooled)`` like the published ``BertModel``, so ``model(ids)[0]`` is the
    ``[batch, tokens, hidden]`` output the published extraction averages."""

    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.config = config
        self.embeddings = DnabertEmbeddings(config)
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList(
            DnabertLayer(config) for _ in range(config.num_hidden_layers))})
        self.pooler = Pooler(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """``attention_mask``: 1 on tokens, 0 on padding; None when no row is padded."""
        hidden = self.embeddings(input_ids)
        bias = attention_bias(self.config.num_attention_heads, attention_mask, input_ids.shape[1], input_ids.device,
                              hidden.dtype)
        for layer in self.encoder["layer"]:
            hidden = layer(hidden, bias)
        return hidden, self.pooler(hidden)
