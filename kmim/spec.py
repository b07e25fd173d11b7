"""How a timm encoder is named in files: `EncoderSpec` (architecture name + keyword arguments). Checkpoints,
encoder.pt files, fine-tuning runs and feature / online tokenizers record it to rebuild the encoder without kmim's
config; it sits below every package that reads one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
from torch import nn


@dataclass(frozen=True)
class EncoderSpec:
    """A timm encoder by architecture name and keyword arguments: what checkpoints, encoder.pt files and feature
    tokenizers record (as `to_dict()`: {"timm_name", "timm_kwargs"}) to rebuild it without kmim's config."""

    timm_name: str
    timm_kwargs: dict[str, Any]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderSpec:
        return cls(str(d["timm_name"]), dict(d["timm_kwargs"]))

    def to_dict(self) -> dict[str, Any]:
        return {"timm_name": self.timm_name, "timm_kwargs": dict(self.timm_kwargs)}

    def create(self) -> nn.Module:
        """The architecture with fresh weights (load the recorded ones into it)."""
        return timm.create_model(self.timm_name, pretrained=False, **self.timm_kwargs)

    def without_head(self) -> EncoderSpec:
        """The encoder of a fine-tuned classifier's spec (its head and pooling dropped)."""
        kw = {k: v for k, v in self.timm_kwargs.items() if k not in ("num_classes", "global_pool")}
        return EncoderSpec(self.timm_name, kw)
