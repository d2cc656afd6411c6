"""SQ-LLaVA in one readable file: CLIP ViT tower, prototype extractor, LLaMA decoder.

Parameter names follow the released checkpoints (HF LLaMA / CLIP names and
`model.mm_projector.*`), so a real checkpoint loads with `load_state_dict`:

    lm_head.weight
    model.embed_tokens.weight, model.layers.{i}.*, model.norm.weight      (LLaMA)
    model.mm_projector.{sim_alpha,sim_beta,c,v,f,ln_1,mlp.0,mlp.2}.*       (Clustering)
    model.vision_tower.vision_tower.vision_model.*                          (CLIPVisionModel)

The one config builds the 7B/13B model and the micro model (see `configs.py`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- config

@dataclass
class VisionConfig:
    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    layer_norm_eps: float = 1e-5
    select_layer: int = -2  # hidden_states index, as `mm_vision_select_layer`
    # "patch": CLIP's one linear patch projection (every released model). "conv": a stack of
    # stride-2 3x3 convolutions with the same output grid (Xiao et al. 2021, "Early convolutions
    # help transformers see better"), for the micro model, whose ViT is trained from scratch
    # and needs a stem that sees the same shape the same way wherever it falls.
    stem: str = "patch"

    @property
    def grid_size(self) -> int:
        """Patches (tokens) per side of the square image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def num_used_layers(self) -> int:
        """Encoder layers whose output reaches the selected hidden state."""
        # hidden_states = [embeddings, layer_0, ..., layer_{L-1}]
        return (self.num_layers + 1 + self.select_layer) if self.select_layer < 0 else self.select_layer


@dataclass
class TextConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class SQLLaVAConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    num_prototypes: int = 256  # K centres of the prototype extractor
    cluster_iters: int = 2
    use_prototypes: bool = True  # False: plain QuickGELU MLP projector (ablation)
    # Subtracted from centre k's similarity (times k) before the hard assignment; 0 in the
    # reference. Trained from scratch, the refinement makes the centres near-identical (top-2
    # similarity margins ~1e-6), so the argmax would follow float rounding and onnxruntime would
    # pick other centres than PyTorch; a small bias settles such near-ties on the first centre.
    cluster_tie_break: float = 0.0

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_patches


# ----------------------------------------------------------------------------- CLIP vision tower

class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.num_heads

        def split(y):
            return y.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h))
        y = att.softmax(dim=-1) @ v
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


def conv_stem(cfg: VisionConfig) -> nn.Sequential:
    """log2(patch_size) stride-2 3x3 convolutions, GELU between them: the same token grid as a
    patch projection of `patch_size`, built from translation-equivariant local filters."""
    n = cfg.patch_size.bit_length() - 1
    if 1 << n != cfg.patch_size:
        raise ValueError(f"a conv stem needs a power-of-two patch size, not {cfg.patch_size}")
    widths = [3] + [min(cfg.hidden_size, 32 << i) for i in range(n - 1)] + [cfg.hidden_size]
    layers: List[nn.Module] = []
    for i in range(n):
        layers.append(nn.Conv2d(widths[i], widths[i + 1], 3, 2, 1))
        if i < n - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        if cfg.stem == "conv":
            self.patch_embedding = conv_stem(cfg)
        else:
            self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.num_patches + 1, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [B,P,D]
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(cfg) for _ in range(cfg.num_layers)])


class CLIPVisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # sic, HF name
        self.encoder = CLIPEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # unused by LLaVA


class CLIPVisionModel(nn.Module):
    """Same state-dict keys as HF `CLIPVisionModel` (`vision_model.*`)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.vision_model = CLIPVisionTransformer(cfg)


class CLIPVisionTower(nn.Module):
    """LLaVA's wrapper: the selected hidden state, CLS dropped (`select_feature='patch'`)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = CLIPVisionModel(cfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vm = self.vision_tower.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixel_values))  # hidden_states[0]
        for layer in vm.encoder.layers[: self.cfg.num_used_layers]:
            x = layer(x)
        return x[:, 1:]


# ----------------------------------------------------------------------------- prototype extractor

def adaptive_pool_matrix(length: int, out: int) -> torch.Tensor:
    """[out, length] averaging matrix equal to AdaptiveAvgPool1d(out) on `length` items.

    PyTorch's windows are [floor(i*L/out), ceil((i+1)*L/out)); a constant matmul exports to
    ONNX where a non-integer adaptive pool does not.
    """
    m = torch.zeros(out, length)
    for i in range(out):
        start = (i * length) // out
        end = -((-(i + 1) * length) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class Clustering(nn.Module):
    """The "cluster" projector of the reference code (`multimodal_projector/cluster.py`).

    Centres start as an adaptive average pool of the tokens, are refined `iters` times by
    attention (`c` as query, `v` as key normalised over the *token* axis, `f` as value, softmax
    over *centres*), then each token receives its nearest centre's aggregate weighted by
    sigmoid(beta + alpha*cos), residually, before the two-layer QuickGELU MLP.
    """

    def __init__(self, channels: int, channels_out: int, num_centers: int, iters: int, num_tokens: int,
                 tie_break: float = 0.0):
        super().__init__()
        self.tie_break = tie_break
        self.sim_alpha = nn.Parameter(torch.ones(1, 1, 1))
        self.sim_beta = nn.Parameter(torch.zeros(1, 1, 1))
        self.c = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.f = nn.Linear(channels, channels)
        self.ln_1 = nn.LayerNorm(channels)  # defined but never applied, as in the reference
        self.iters = iters
        self.mlp = nn.Sequential(OrderedDict([
            ("0", nn.Linear(channels, channels_out)),
            ("1", QuickGELU()),
            ("2", nn.Linear(channels_out, channels_out)),
        ]))
        self.register_buffer("pool", adaptive_pool_matrix(num_tokens, num_centers), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = self.v(x).transpose(1, 2)  # [B,D,L]
        feature = self.f(x)  # [B,L,D]
        centers = self.pool @ x  # [B,K,D]
        centers_feature = self.pool @ feature
        for _ in range(self.iters):
            centers = self.c(centers)
            sim = (F.normalize(centers, dim=-1) @ F.normalize(value, dim=-1)).softmax(dim=-2)  # [B,K,L]
            centers = sim @ feature
        cos = F.normalize(centers, dim=-1) @ F.normalize(x, dim=-1).transpose(1, 2)  # [B,K,L]
        similarity = torch.sigmoid(self.sim_beta + self.sim_alpha * cos)
        # hard nearest-centre assignment: one-hot of the argmax over centres
        score = similarity
        if self.tie_break:
            k = torch.arange(similarity.shape[1], dtype=x.dtype, device=x.device)
            score = similarity - self.tie_break * k.view(1, -1, 1)
        mask = F.one_hot(score.argmax(dim=1), similarity.shape[1]).transpose(1, 2).to(x.dtype)
        similarity = similarity * mask
        out = (similarity @ feature + centers_feature) / (mask.sum(dim=-1, keepdim=True) + 1.0)  # [B,K,D]
        out = x + similarity.transpose(1, 2) @ out  # [B,L,D]
        return self.mlp(out)


class MLPProjector(nn.Module):
    """The projector without prototypes (ablation): the same QuickGELU MLP, same key names."""

    def __init__(self, channels: int, channels_out: int):
        super().__init__()
        self.mlp = nn.Sequential(OrderedDict([
            ("0", nn.Linear(channels, channels_out)),
            ("1", QuickGELU()),
            ("2", nn.Linear(channels_out, channels_out)),
        ]))

    def forward(self, x):
        return self.mlp(x)


# ----------------------------------------------------------------------------- LLaMA decoder

class LlamaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B,1,T,D] for HF LLaMA's rotate-half RoPE."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim))
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq  # [B,T,D/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


KV = Tuple[torch.Tensor, torch.Tensor]


class LlamaAttention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=False)
        # diagnostics (training.lookup): keep the last forward's attention weights [B,H,T,P]
        self.keep_attention = False
        self.attention: Optional[torch.Tensor] = None

    def forward(self, x, cos, sin, mask, past: KV) -> Tuple[torch.Tensor, KV]:
        b, t, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(b, t, c.num_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = torch.cat([past[0], k], dim=2)
        v = torch.cat([past[1], v], dim=2)
        present = (k, v)
        # Grouped KV heads: query head h reads KV head h // rep (as `repeat_interleave(rep, 1)` on
        # k and v), computed by grouping the queries [B,kvH,rep,T,D] against k/v broadcast over
        # `rep`. (torch 1.13's ONNX export of repeat_interleave here fails in onnxruntime, "left
        # operand cannot broadcast on dim 1", and an expand+Reshape over the cache axis would
        # break on the empty first-step cache, ONNX Reshape reading a 0 as "copy this dim".)
        rep = c.num_heads // c.num_kv_heads
        qg = q.reshape(b, c.num_kv_heads, rep, t, c.head_dim)
        att = ((qg @ k.unsqueeze(2).transpose(-2, -1)) / math.sqrt(c.head_dim) + mask.unsqueeze(1)).softmax(dim=-1)
        if self.keep_attention:
            self.attention = att.reshape(b, c.num_heads, t, -1)
        y = (att @ v.unsqueeze(2)).reshape(b, c.num_heads, t, c.head_dim)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1)), present


class LlamaMLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, past):
        h, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), present


def decoder_mask(attention_mask: torch.Tensor, t: int, dtype=torch.float32) -> torch.Tensor:
    """Additive [B,1,T,P+T] mask: causal over the new tokens, padding (0s) masked out."""
    b, total = attention_mask.shape
    past = total - t
    dev = attention_mask.device
    q = torch.arange(t, device=dev).view(t, 1) + past
    kpos = torch.arange(total, device=dev).view(1, total)
    allowed = (kpos <= q)[None, None] & (attention_mask[:, None, None, :] > 0)
    return torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill(~allowed, torch.finfo(dtype).min)


class SQLLaVAModel(nn.Module):
    """`model.*`: LLaMA body plus the multimodal parts."""

    def __init__(self, cfg: SQLLaVAConfig):
        super().__init__()
        t = cfg.text
        self.embed_tokens = nn.Embedding(t.vocab_size, t.hidden_size)
        self.layers = nn.ModuleList([LlamaDecoderLayer(t) for _ in range(t.num_layers)])
        self.norm = LlamaRMSNorm(t.hidden_size, t.rms_norm_eps)
        self.vision_tower = CLIPVisionTower(cfg.vision)
        if cfg.use_prototypes:
            self.mm_projector = Clustering(cfg.vision.hidden_size, t.hidden_size, cfg.num_prototypes,
                                           cfg.cluster_iters, cfg.vision.num_patches, cfg.cluster_tie_break)
        else:
            self.mm_projector = MLPProjector(cfg.vision.hidden_size, t.hidden_size)


class SQLLaVA(nn.Module):
    def __init__(self, cfg: SQLLaVAConfig):
        super().__init__()
        self.cfg = cfg
        self.model = SQLLaVAModel(cfg)
        self.lm_head = nn.Linear(cfg.text.hidden_size, cfg.text.vocab_size, bias=False)

    # --- the three exported graphs -------------------------------------------------------

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixels [B,3,S,S] -> projected image embeddings [B,N,H]."""
        return self.model.mm_projector(self.model.vision_tower(pixel_values))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def decode(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               past: Optional[List[KV]] = None, logits_for: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, List[KV]]:
        """One forward step over new embeddings with a KV cache; returns logits and the new cache.

        `logits_for` (bool [B,T]) limits the vocabulary projection to those positions (training).
        """
        t = self.cfg.text
        b, n, _ = inputs_embeds.shape
        if past is None:
            empty = inputs_embeds.new_zeros(b, t.num_kv_heads, 0, t.head_dim)
            past = [(empty, empty)] * t.num_layers
        cos, sin = rope_cos_sin(position_ids, t.head_dim, t.rope_theta)
        mask = decoder_mask(attention_mask, n, inputs_embeds.dtype)
        x = inputs_embeds
        presents = []
        for layer, kv in zip(self.model.layers, past):
            x, present = layer(x, cos, sin, mask, kv)
            presents.append(present)
        x = self.model.norm(x)
        if logits_for is not None:
            x = x[logits_for]
        return self.lm_head(x), presents


# ----------------------------------------------------------------------------- helpers

def splice_image(text_embeds: List[torch.Tensor], image_embeds: torch.Tensor) -> torch.Tensor:
    """Joins the embedded text chunks with the image embeddings between the first two."""
    parts = [text_embeds[0], image_embeds] + list(text_embeds[1:])
    return torch.cat(parts, dim=0)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
