"""The demo's expected-duration line: printed once, after the first epoch trained, from that epoch's pace."""

import time

from kmim.studies.demo import EVAL_SHARE, _DemoEta


def test_expected_duration_is_printed_once_from_the_first_epoch(capsys):
    eta = _DemoEta(time.perf_counter(), epochs_left=11, progress=True)
    eta({"epoch": 0, "epoch_s": 60.0})
    eta({"epoch": 1, "epoch_s": 1.0})  # later epochs say nothing
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    minutes = round(60.0 * 10 * (1 + EVAL_SHARE) / 60)  # 10 epochs left after the first, plus the evaluations
    assert f"about {minutes} min in all, {minutes} min from now" in out[0]
    assert "10 more epochs at 60.0 s each" in out[0]


def test_quiet_demo_prints_no_estimate(capsys):
    _DemoEta(time.perf_counter(), epochs_left=3, progress=False)({"epoch": 0, "epoch_s": 5.0})
    assert capsys.readouterr().out == ""
