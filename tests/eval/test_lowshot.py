import torch

from kmim.eval.lowshot import low_shot_probe


def test_low_shot_probe_separable_and_seeded():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    y = torch.arange(3).repeat_interleave(40)
    x = centers[y] + 0.3 * torch.randn(120, 2, generator=g)
    res = low_shot_probe(x, y, x, test_labels=y, shots=5, draws=3)
    assert res["mean"] == 100.0 and len(res["draws"]) == 3
    noise = torch.randn(120, 2, generator=g)  # features unrelated to the labels: near chance (33 %)
    chance = low_shot_probe(noise, y, noise, test_labels=y, shots=5, draws=4)
    assert chance["mean"] < 60 and chance == low_shot_probe(noise, y, noise, test_labels=y, shots=5, draws=4)
