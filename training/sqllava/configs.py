"""Named model sizes. The same `SQLLaVA` code builds each of them."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

from .model import SQLLaVAConfig, TextConfig, VisionConfig

CLIP_L_336 = VisionConfig(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                          num_layers=24, num_heads=16)

PRESETS: Dict[str, SQLLaVAConfig] = {
    # Vicuna-7B v1.5 + ShareGPT4V CLIP-L/14-336, K=256 prototypes, 2 iterations
    "sq-llava-7b": SQLLaVAConfig(
        vision=CLIP_L_336,
        text=TextConfig(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                        num_kv_heads=32, max_position_embeddings=4096),
    ),
    "sq-llava-13b": SQLLaVAConfig(
        vision=CLIP_L_336,
        text=TextConfig(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40,
                        num_kv_heads=40, max_position_embeddings=4096),
    ),
    # The bundled model (models/sq-llava-micro): 128 px, a conv stem of stride 16 -> 64 image
    # tokens, 24 prototypes (64 -> 24 is a non-integer pool, as 576 -> 256 is), grouped KV heads.
    "micro": SQLLaVAConfig(
        vision=VisionConfig(image_size=128, patch_size=16, hidden_size=128, intermediate_size=512,
                            num_layers=5, num_heads=4, stem="conv"),  # select_layer -2: 4 layers used
        text=TextConfig(hidden_size=192, intermediate_size=512, num_layers=4, num_heads=6,
                        num_kv_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6),
        num_prototypes=24, cluster_tie_break=1e-3,
    ),
    # Random-weight test model for golden files and unit tests (fast, still GQA + odd pooling:
    # 16 patches -> 6 centres). The text width is 8 so that the 32,000-token embedding and
    # lm_head (the real vocabulary) stay ~1 MB each: the golden bundle (test/fixtures/golden),
    # fp32 + fp16, is ~3.5 MB.
    "tiny": SQLLaVAConfig(
        vision=VisionConfig(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64,
                            num_layers=3, num_heads=2),
        text=TextConfig(hidden_size=8, intermediate_size=32, num_layers=2, num_heads=4,
                        num_kv_heads=2, max_position_embeddings=256),
        num_prototypes=6,
    ),
}


def config_to_dict(cfg: SQLLaVAConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(d: Dict[str, Any]) -> SQLLaVAConfig:
    d = dict(d)
    return SQLLaVAConfig(vision=VisionConfig(**d.pop("vision")), text=TextConfig(**d.pop("text")), **d)
