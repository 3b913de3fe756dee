"""ESM-2 in plain PyTorch (FastESM2_650, ESM2-3B), written from its architecture (no remote code).

ESM-2 (Lin et al. 2023) is a pre-LayerNorm transformer encoder:
  - embeddings: the token embeddings alone (positions are rotary); with
    ``token_dropout``, as trained, <mask> tokens are zeroed and the rest scaled
    by (1 - 0.15 * 0.8) / (1 - the sequence's share of <mask>); padding zeroed;
  - attention: LayerNorm, separate query/key/value projections, the query
    scaled by 1/sqrt(head_dim), the rotary embedding (base 10,000, the two
    halves of each head rotated) on query and key, SDPA, output projection,
    residual;
  - feed-forward: LayerNorm, dense, exact (erf) GELU, dense, residual;
  - a final LayerNorm, ``emb_layer_norm_after``.

Modules are named after the checkpoint keys (``encoder.layer.N.attention.output.dense``,
...), but for each layer's query, key and value projections, joined into one
``attention.self.qkv`` (``build`` joins them, ``checkpoint_state`` splits them
back): ``key_table(config)`` lists every key and shape the weights must hold.
The published folders carry them under ``esm.``, with what this encoder has
no use for (the masked-LM and contact heads, the rotary frequencies, which
are computed here; see ``encoder_state``). The rotary tables are computed in
fp32 once per forward and applied in the compute dtype, and nothing in
``forward`` waits for the host, so a batch loop around it stays asynchronous.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

ROTARY_BASE = 10_000
MASK_RATIO_TRAIN = 0.15 * 0.8      # the share of tokens ESM-2 training zeroed as <mask>


@dataclass(frozen=True)
class Esm2Config:
    """The ``config.json`` fields the architecture uses (FastESM2_650: 1280 wide, 33 layers, 20 heads, 5120;
    ESM2-3B: 2560, 36, 40, 10240). Defaults are transformers' ``EsmConfig`` ones, which the published files
    override; the architecture this module writes is refused by ``unsupported`` when a config asks for another."""
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    layer_norm_eps: float = 1e-12
    token_dropout: bool = False
    mask_token_id: int | None = None
    position_embedding_type: str = "absolute"
    emb_layer_norm_before: bool | None = None
    hidden_act: str = "gelu"

    @classmethod
    def missing(cls, config: dict) -> list[str]:
        """The required fields ``config`` lacks."""
        return [f.name for f in fields(cls) if f.default is MISSING and f.name not in config]

    @classmethod
    def from_dict(cls, config: dict) -> Esm2Config:
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})

    def unsupported(self) -> str | None:
        """What of this config is not ESM-2 (ESM-1b's absolute positions, say), or None."""
        if self.position_embedding_type != "rotary":
            return f"position_embedding_type {self.position_embedding_type!r} (ESM-2 has 'rotary')"
        if self.emb_layer_norm_before:
            return "emb_layer_norm_before (ESM-2 has none)"
        if self.hidden_act != "gelu":
            return f"hidden_act {self.hidden_act!r} (ESM-2 has 'gelu')"
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 2:
            return (f"hidden_size {self.hidden_size} for {self.num_attention_heads} heads (each head's width "
                    "must be even)")
        if self.token_dropout and self.mask_token_id is None:
            return "token_dropout without a mask_token_id"
        return None


def key_table(config: Esm2Config) -> dict[str, tuple[int, ...]]:
    """Every weight of an ESM-2 encoder, by checkpoint key (without ``esm.``), with its shape."""
    width, inner = config.hidden_size, config.intermediate_size
    table = {"embeddings.word_embeddings.weight": (config.vocab_size, width)}
    for n in range(config.num_hidden_layers):
        layer = f"encoder.layer.{n}"
        for name, (rows, columns) in (("attention.self.query", (width, width)), ("attention.self.key", (width, width)),
                                      ("attention.self.value", (width, width)),
                                      ("attention.output.dense", (width, width)),
                                      ("intermediate.dense", (inner, width)), ("output.dense", (width, inner))):
            table[f"{layer}.{name}.weight"], table[f"{layer}.{name}.bias"] = (rows, columns), (rows,)
        for norm in ("attention.LayerNorm", "LayerNorm"):
            table[f"{layer}.{norm}.weight"] = table[f"{layer}.{norm}.bias"] = (width,)
    table["encoder.emb_layer_norm_after.weight"] = table["encoder.emb_layer_norm_after.bias"] = (width,)
    return table


def rotary_frequencies(head_width: int, device=None) -> torch.Tensor:
    """The rotary embedding's inverse frequencies, 1 / 10000^(2i / head_width), in fp32."""
    return 1.0 / ROTARY_BASE ** (torch.arange(0, head_width, 2, device=device, dtype=torch.float32) / head_width)


def rotary_tables(length: int, head_width: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` ``[length, head_width]`` of positions 0..length-1, computed in fp32 and given in
    ``dtype`` (the compute dtype: no fp32 round trip per layer)."""
    positions = torch.arange(length, device=device, dtype=torch.float32)
    angles = torch.outer(positions, rotary_frequencies(head_width, device))
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding of ``x`` ``[..., length, head_width]``: its two halves rotated as complex pairs."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class Embeddings(nn.Module):
    def __init__(self, config: Esm2Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_dropout, self.mask_token_id = config.token_dropout, config.mask_token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids)
        if self.token_dropout:
            masked = input_ids == self.mask_token_id
            embeddings = embeddings.masked_fill(masked[..., None], 0.0)
            tokens = input_ids.shape[1] if attention_mask is None else attention_mask.sum(-1)
            observed = masked.sum(-1).float() / tokens
            embeddings = (embeddings * (1 - MASK_RATIO_TRAIN) / (1 - observed)[:, None, None]).to(embeddings.dtype)
        return embeddings if attention_mask is None else embeddings * attention_mask[..., None].to(embeddings.dtype)


class SelfAttention(nn.Module):
    """The checkpoint's query, key and value projections as one matrix product (``qkv``, their weights one
    after the other), the query and key rotated together: 8 kernels where separate ones take 14."""

    def __init__(self, config: Esm2Config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                keys: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = hidden.shape
        qkv = self.qkv(hidden).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # [3, B, H, L, d]
        # ESM scales the query before the rotation (not the logits after it), as trained
        query, key = rotate(torch.stack((qkv[0] * qkv.shape[-1] ** -0.5, qkv[1])), *rotary)
        context = F.scaled_dot_product_attention(query, key, qkv[2], attn_mask=keys, scale=1.0)
        return context.transpose(1, 2).reshape(batch, length, width)


class Dense(nn.Module):
    """A checkpoint's ``<name>.dense``."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.dense = nn.Linear(inputs, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class Attention(nn.Module):
    def __init__(self, config: Esm2Config):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self = SelfAttention(config)                 # checkpoint name: attention.self
        self.output = Dense(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, rotary, keys: torch.Tensor | None) -> torch.Tensor:
        return hidden + self.output(self.self(self.LayerNorm(hidden), rotary, keys))


class Layer(nn.Module):
    def __init__(self, config: Esm2Config):
        super().__init__()
        self.attention = Attention(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = Dense(config.hidden_size, config.intermediate_size)
        self.output = Dense(config.intermediate_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, rotary, keys: torch.Tensor | None) -> torch.Tensor:
        hidden = self.attention(hidden, rotary, keys)
        return hidden + self.output(F.gelu(self.intermediate(self.LayerNorm(hidden))))


class Encoder(nn.Module):
    def __init__(self, config: Esm2Config):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.emb_layer_norm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class Esm2Output(NamedTuple):
    last_hidden_state: torch.Tensor           # [batch, tokens, hidden_size]


class Esm2Model(nn.Module):
    """``model(input_ids, attention_mask)`` returns ``Esm2Output(last_hidden_state)``, as transformers'
    ``EsmModel`` does (``.last_hidden_state`` or ``[0]``); ``attention_mask`` is 1 on tokens, 0 on padding."""

    base_model_prefix = "esm"                 # the published checkpoints' prefix

    def __init__(self, config: Esm2Config):
        super().__init__()
        problem = config.unsupported()
        if problem:
            raise ValueError(f"not an ESM-2 config: {problem}")
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return checkpoint_state(self)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Esm2Output:
        hidden = self.embeddings(input_ids, attention_mask)
        head_width = self.config.hidden_size // self.config.num_attention_heads
        rotary = rotary_tables(input_ids.shape[1], head_width, input_ids.device, hidden.dtype)
        # which keys each query may attend to; none to mask when no row is padded (then flash attention can run)
        keys = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layer:
            hidden = layer(hidden, rotary, keys)
        return Esm2Output(self.encoder.emb_layer_norm_after(hidden))


# Checkpoint keys that are not encoder weights: the published heads, transformers' position ids, and
# the rotary frequencies (a buffer in the files; this model computes them, and load_state checks them).
IGNORED_PREFIXES = ("lm_head.", "contact_head.", "pooler.")
IGNORED_KEYS = ("embeddings.position_ids",)
ROTARY_KEY_SUFFIX = ".rotary_embeddings.inv_freq"


def encoder_state(state: dict[str, torch.Tensor], config: Esm2Config) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The encoder's tensors of a checkpoint (``esm.`` prefix taken off, heads left out), and what is wrong
    with them: keys missing or left over, shapes other than the config's, rotary frequencies not ESM-2's."""
    prefix = "esm." if any(key.startswith("esm.") for key in state) else ""
    tensors, problems = {}, []
    head_width = config.hidden_size // config.num_attention_heads
    for key, tensor in state.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if name.startswith(IGNORED_PREFIXES) or key.startswith(IGNORED_PREFIXES) or name in IGNORED_KEYS:
            continue
        if name.endswith(ROTARY_KEY_SUFFIX):
            if not torch.allclose(tensor.float(), rotary_frequencies(head_width), rtol=1e-3, atol=0):
                problems.append(f"{key} holds other rotary frequencies than ESM-2's (base {ROTARY_BASE})")
            continue
        # old checkpoints name LayerNorm weights gamma and beta; transformers reads them so, and so does this
        tensors[name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
                .replace("emb_layer_norm_after.gamma", "emb_layer_norm_after.weight")
                .replace("emb_layer_norm_after.beta", "emb_layer_norm_after.bias")] = tensor
    table = key_table(config)
    problems += [f"{prefix}{key} is missing" for key in table if key not in tensors]
    problems += [f"{prefix}{key} has no place in an ESM-2 encoder" for key in tensors if key not in table]
    problems += [f"{prefix}{key} is {tuple(tensors[key].shape)}, the config says {shape}"
                 for key, shape in table.items() if key in tensors and tuple(tensors[key].shape) != shape]
    return tensors, problems


PROJECTIONS = ("query", "key", "value")          # the checkpoint's separate projections, in qkv's order


def build(config: Esm2Config, tensors: dict[str, torch.Tensor]) -> Esm2Model:
    """The encoder on the checkpoint's tensors (no random initialisation), each layer's query, key and value
    projections joined into its ``qkv``."""
    state = dict(tensors)
    for n in range(config.num_hidden_layers):
        prefix = f"encoder.layer.{n}.attention.self"
        for kind in ("weight", "bias"):
            state[f"{prefix}.qkv.{kind}"] = torch.cat([state.pop(f"{prefix}.{name}.{kind}") for name in PROJECTIONS])
    with torch.device("meta"):
        model = Esm2Model(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def checkpoint_state(model: Esm2Model) -> dict[str, torch.Tensor]:
    """The model's tensors under the checkpoint's keys (``key_table``, without ``esm.``), ``qkv`` split back
    into query, key and value: what the weights are checked against."""
    state = {}
    for name, tensor in model.named_parameters():
        if ".qkv." in name:
            for projection, part in zip(PROJECTIONS, tensor.chunk(3)):
                state[name.replace(".qkv.", f".{projection}.")] = part
        else:
            state[name] = tensor
    return state
