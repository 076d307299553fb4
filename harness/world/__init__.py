"""The mini-world: synthetic biographies, its own tokenizer and a tiny pretrained base model (CPU-sized)."""

from harness.world.build import build_world, world_dir

__all__ = ["build_world", "world_dir"]
