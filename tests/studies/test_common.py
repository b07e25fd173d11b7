"""What the studies share: the noise line at the level the arms reach."""

from kmim.studies.common import noise


def test_the_noise_line_is_the_binomial_se_at_the_arms_mean_knn():
    recs = [{"n_test": 3925, "knn_top1": 44.0}, {"n_test": 3925, "knn_top1": 46.5}]
    # mean 45.25 -> 45 %: 100 * sqrt(0.45 * 0.55 / 3925) = 0.794
    assert noise(recs) == "one binomial SE of a top-1 near 45 % on 3925 test images is 0.8 pt"
    # no kNN in the records (finetune-recipe): the old 80 %, 100 * sqrt(0.8 * 0.2 / 400) = 2.0
    assert noise([{"n_test": 400}]) == "one binomial SE of a top-1 near 80 % on 400 test images is 2.0 pt"
