"""An online clustering tokenizer (CAPI-style): an EMA teacher's patch features, L2-normalised, scored against K
linear prototypes; Sinkhorn-Knopp turns the scores into balanced soft assignments, the training targets.

Facts from CAPI (Darcet et al., TMLR 2025; facebookresearch/capi `model.py`, `default_pretrain_config.yaml`): the
prototypes are a `Linear(D, K, bias=True)` on the L2-normalised feature, weights drawn from N(0, 1), bias 0;
Sinkhorn-Knopp runs position-wise (for each patch position, the prototypes are balanced over the images of the
batch, the column sums all-reduced over processes) for 3 iterations on logits / 0.06; the prototypes learn from the
cross-entropy between those assignments and softmax(logits / 0.12) with their own AdamW; the teacher is an EMA of the
student's encoder and sees the full image.

The teacher and prototypes are the tokenizer's state; the training step (kmim.engine.pretrain) updates both. As a
tokenizer (`encode`) it gives each patch the prototype of largest score, one image at a time (no batch
dependence), so TCAS / NMI score it as any other tokenizer. It never sees labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from kmim.spec import EncoderSpec
from kmim.tokenizers.base import MetaLike, Tokenizer, as_meta

Reduce = Callable[[torch.Tensor], torch.Tensor]
EXP_OFFSET = 60.0  # each column's largest entry becomes exp(60): sums of up to ~1e12 of them stay finite in fp32
# and entries up to ~160 below it stay non-zero (CAPI shifts the same way, to its dtype's largest exponent)
TINY = torch.finfo(torch.float32).tiny


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor,
    iters: int,
    reduce_sum: Reduce | None = None,
    *,
    reduce_max: Reduce | None = None,
) -> torch.Tensor:
    """Position-wise Sinkhorn-Knopp: scores S (B, L, K) (logits / temperature) -> assignments Q (B, L, K).

    For each position l, Q_l = exp(S_l) is alternately divided by its column sums (over the B images of the batch,
    summed over processes by `reduce_sum`) and its row sums (over the K prototypes), `iters` times, ending with the
    rows: every row sums to 1 and, as iters grows, every column to B_total / K (the uniform prototype marginal).
    The exponent is shifted per column by the max over the batch (over processes by `reduce_max`), which the
    first column division cancels exactly. Sums are clamped at the smallest normal float rather than offset by
    CAPI's eps = 1e-8, which leaves a row whose entries are all tiny (a patch far from every prototype's best match)
    summing to ~0 instead of 1. Entries more than ~160 below their column's max underflow to 0 in fp32; a row all of
    whose entries do stays a zero row, never NaN.
    """
    s = scores.float()
    shift = s.amax(dim=0, keepdim=True)  # (1, L, K)
    if reduce_max is not None:
        shift = reduce_max(shift)
    q = torch.exp(s - shift + EXP_OFFSET)  # (B, L, K)
    for _ in range(iters):
        col = q.sum(dim=0, keepdim=True)  # (1, L, K)
        if reduce_sum is not None:
            col = reduce_sum(col)
        q = q / col.clamp_min(TINY)
        q = q / q.sum(dim=-1, keepdim=True).clamp_min(TINY)
    return q


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temp: float) -> torch.Tensor:
    """mean over rows of -sum_k q_k log softmax(z / temp)_k; logits z and targets q (..., K)."""
    logp = F.log_softmax(logits.float() / temp, dim=-1)
    return -(targets.float() * logp).sum(dim=-1).mean()


def assignment_entropy(q: torch.Tensor) -> torch.Tensor:
    """Mean entropy -sum_k q_k log q_k of the rows of q (..., K), in nats (log K at uniform, 0 when one-hot)."""
    return -torch.xlogy(q, q).sum(dim=-1).mean()


class OnlineClusters(Tokenizer):
    """meta: k, patch_size, in_chans, normalization, feature_dim, encoder {timm_name, timm_kwargs}, target_temp,
    pred_temp, sinkhorn_iters, positionwise_sk (absent in files written before it: True). `teacher` is a timm ViT
    (frozen for autograd, moved by `ema_update`)."""

    kind = "online-clusters"

    def __init__(self, meta: MetaLike, teacher: VisionTransformer, prototypes: nn.Linear) -> None:
        super().__init__(meta)
        self.teacher: VisionTransformer = teacher.requires_grad_(False).eval()
        self.prototypes = prototypes

    @classmethod
    def create(cls, meta: MetaLike, seed: int) -> OnlineClusters:
        """A fresh one: the teacher rebuilt from meta.extra["encoder"] (its weights are set by `copy_from` or a state
        dict), the prototypes drawn from N(0, 1) with bias 0 under a generator seeded by `seed`."""
        meta = as_meta(meta)
        teacher = cast(VisionTransformer, EncoderSpec.from_dict(meta.extra["encoder"]).create())
        protos = nn.Linear(meta.feature_dim, meta.k, bias=True)
        with torch.no_grad():
            protos.weight.copy_(torch.randn(protos.weight.shape, generator=torch.Generator().manual_seed(seed)))
            protos.bias.zero_()
        return cls(meta, teacher, protos)

    @classmethod
    def from_state(cls, meta: MetaLike, state: dict[str, Any]) -> OnlineClusters:
        tok = cls.create(meta, seed=0)
        tok.load_state_dict(state)
        return tok

    def train(self, mode: bool = True) -> OnlineClusters:
        """The teacher stays in eval mode (no dropout / drop path) whatever the tokenizer's mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def copy_from(self, student: nn.Module) -> None:
        """Teacher := student (CAPI starts the EMA from the student's initial weights)."""
        self.teacher.load_state_dict(student.state_dict())

    @torch.no_grad()
    def ema_update(self, student: nn.Module, momentum: float) -> None:
        """theta_teacher <- m * theta_teacher + (1 - m) * theta_student, for every parameter."""
        t: list[torch.Tensor] = list(self.teacher.parameters())
        s: list[torch.Tensor] = [p.detach() for p in student.parameters()]
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, s, alpha=1.0 - momentum)

    @torch.no_grad()
    def features(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) full images -> the teacher's patch tokens (B, L, D) after its final norm."""
        tokens = self.teacher.forward_features(imgs)  # (B, prefix + L, D)
        return tokens[:, self.teacher.num_prefix_tokens :]

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> prototype scores (B, L, K) of the L2-normalised features (differentiable in the prototypes)."""
        return cast(torch.Tensor, self.prototypes(F.normalize(feats, dim=-1, eps=1e-7)))

    def assign(
        self, logits: torch.Tensor, reduce_sum: Reduce | None = None, reduce_max: Reduce | None = None
    ) -> torch.Tensor:
        """Soft targets (B, L, K) by Sinkhorn-Knopp on logits / target_temp (no gradient): per patch position over the
        batch (meta positionwise_sk, the default), or once over all B * L patches (CAPI's positionwise_sk=False)."""
        iters, temp = int(self.meta.extra["sinkhorn_iters"]), float(self.meta.extra["target_temp"])
        scores = logits.detach() / temp  # (B, L, K)
        if self.meta.extra.get("positionwise_sk", True):
            return sinkhorn_knopp(scores, iters, reduce_sum, reduce_max=reduce_max)
        flat = scores.reshape(-1, 1, scores.shape[-1])  # (B * L, 1, K): one column set over every patch
        return sinkhorn_knopp(flat, iters, reduce_sum, reduce_max=reduce_max).reshape(scores.shape)

    def clustering_loss(self, logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The prototypes' own loss: soft cross-entropy of softmax(logits / pred_temp) against the assignments."""
        return soft_cross_entropy(logits, q, float(self.meta.extra["pred_temp"]))

    @torch.no_grad()
    def encode(self, imgs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> the prototype of largest score per patch (B, L) int64."""
        return self.logits(self.features(imgs)).argmax(dim=-1)
