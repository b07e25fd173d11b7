"""The token-class co-occurrence counts that TCAS and NMI are computed from."""

import numpy as np
import torch
from torch.utils.data import TensorDataset

from kmim.eval.tokens import token_counts


class _FirstPixelTokens:
    """A stand-in tokenizer: one patch per image, its token = the image's first pixel (0 or 1)."""

    k, needs_labels = 2, False

    def to(self, device):
        return self

    def eval(self):
        return self

    def encode(self, imgs, labels=None):
        return imgs[:, 0, 0, :1].long()  # (B, 1)


def test_counts_by_hand_and_the_same_with_dataloader_workers():
    imgs = torch.zeros(6, 1, 2, 2)
    imgs[[0, 1, 4], 0, 0, 0] = 1  # token 1 for images 0, 1, 4
    ds = TensorDataset(imgs, torch.tensor([0, 0, 1, 1, 2, 2]))
    want = np.array([[0, 2, 1], [2, 0, 1]])  # n_kl: token k, class l
    for workers in (0, 2):
        got = token_counts(_FirstPixelTokens(), ds, 3, device="cpu", batch_size=4, progress=False, num_workers=workers)
        assert np.array_equal(got, want), workers
