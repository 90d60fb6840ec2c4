"""Every default of the benchmark, in one place: the engine's function defaults (`ats_hf.benchmark`), the command
line's options and its help text all read them here. Standard library only, so that `ats-hf benchmark --help` loads
no torch."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TimingDefaults:
    """What is timed: batch sizes, images per pass (rounded to whole batches), timed passes per method."""

    batch_sizes: tuple[int, ...]
    timing_images: int
    repeats: int


ACCURACY_MODE_TIMING = TimingDefaults(batch_sizes=(1, 256), timing_images=128, repeats=5)
SPEED_MODE_TIMING = TimingDefaults(batch_sizes=(1, 32), timing_images=16, repeats=5)
WARMUP_PASSES = 1  # untimed passes per method before the timed ones
EVAL_BATCH_SIZE = 64  # images per forward pass when measuring accuracy, GMACs and tokens
SEED = 0
# The embedded model's sweep: ATS in layers S..5 for each S (S = 3 is the setting it shipped until 2026-12-01).
SWEEP_FROM_LAYERS = (1, 2, 3, 4, 5)
SPEED_MODE_MAX_TOKENS = 0.5  # K of the ATS method in speed mode
ATTN_IMPLEMENTATION = "sdpa"
DTYPE = "float32"
RUNTIME = "eager"  # where methods are timed: eager, compile or onnxruntime
COMPILE_BACKEND = "inductor"  # torch.compile's backend in the compile runtime
OUTPUT_DIR = Path("outputs") / "benchmark"
SPEED_MODE_OUTPUT_DIR = Path("outputs") / "speed-{geometry}"
# A timing whose repeats differ by more than this fraction of their median ((max - min) / median) is unreliable.
UNRELIABLE_SPREAD = 0.5
# Named geometries for speed mode: image size, patch size, width, depth, heads, MLP size (and the family, a name in
# `ats_hf.families`, if not "vit", with its own fields).
GEOMETRIES = {
    "deit-tiny": dict(image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                      intermediate_size=768),
    "deit-s": dict(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                   intermediate_size=1536),
    "deit-b": dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072),
    # CLIP vision towers (ViT-B/16 and ViT-L/14 at 336 px: 197 and 577 tokens; quick_gelu, pre-norm before layer 0).
    "clip-b16": dict(family="clip", image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072),
    "clip-l14-336": dict(family="clip", image_size=336, patch_size=14, hidden_size=1024, num_hidden_layers=24,
                         num_attention_heads=16, intermediate_size=4096),
    # DINOv2 with 4 registers (ViT-S/14 and ViT-B/14 at 224 px: 256 patches + CLS + 4 registers = 261 tokens).
    "dinov2-s14-reg": dict(family="dinov2", image_size=224, patch_size=14, hidden_size=384, num_hidden_layers=12,
                          num_attention_heads=6, mlp_ratio=4, num_register_tokens=4),
    "dinov2-b14-reg": dict(family="dinov2", image_size=224, patch_size=14, hidden_size=768, num_hidden_layers=12,
                          num_attention_heads=12, mlp_ratio=4, num_register_tokens=4),
    # Distilled DeiT-S (CLS and distillation tokens, two heads): 196 patches + 2 = 198 tokens.
    "deit-s-distilled": dict(family="deit", image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12,
                             num_attention_heads=6, intermediate_size=1536),
    # ViViT (joint space-time attention): 8 frames of 224 px in 2 x 16 x 16 tubelets at ViT-S width (784 tubelets +
    # CLS), and google/vivit-b-16x2-kinetics400's geometry (32 frames: 3136 tubelets + CLS).
    "vivit-s": dict(family="vivit", image_size=224, num_frames=8, tubelet_size=[2, 16, 16], hidden_size=384,
                    num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vivit-b": dict(family="vivit", image_size=224, num_frames=32, tubelet_size=[2, 16, 16], hidden_size=768,
                    num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    # VideoMAE (no CLS token; the mean query scores): 8 frames of 224 px in 2 x 16 x 16 tubelets at ViT-S width (784
    # tubelets, as vivit-s without CLS), and MCG-NJU/videomae-base-finetuned-kinetics's geometry (16 frames: 1568).
    "videomae-s": dict(family="videomae", image_size=224, num_frames=8, tubelet_size=2, patch_size=16,
                       hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "videomae-b": dict(family="videomae", image_size=224, num_frames=16, tubelet_size=2, patch_size=16,
                       hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    # For tests and dry runs: 17 tokens, 4 layers.
    "tiny": dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=128),
}
