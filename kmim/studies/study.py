"""`kmim study NAME --out DIR`: the paper's empirical claims as fixed sets of pretraining + evaluation runs.

* `tcas-vs-probe` (Appendix E): ten tokenizers spanning the TCAS range, each the K-MIM target at one budget, two
  seeds (each fits its own tokenizer); TCAS and NMI of each beside kNN, linear-probe and low-shot (10 images per
  class, 5 draws) top-1; Spearman and Pearson over the tokenizers' seed means with bootstrap 95 % intervals over
  tokenizers. (The 20-epoch first round, docs/results/tcas-vs-probe, ran seed 0 only, arms named without "-s0";
  it is finished and is not continued by this code.)
* `k-ablation` (Table 4): PIXEL K in {10, 25, 50, 100, 200, 1000}, two seeds.
* `vs-mae` (section 5): K-MIM PIXEL, MAE norm-pix, MAE raw pixels, K-MIM HOG, three seeds; kNN at every saved
  checkpoint and the linear probe at a few (accuracy vs epochs); the runs of the seeds in `vs_mae.FINETUNE_SEEDS`
  fine-tuned with the preset's `finetune` section (the paper's main metric).
* `finetune-recipe`: the fine-tuning recipe for vs-mae chosen on untrained encoders alone (so it favours no method):
  each candidate of `finetune_recipe.RECIPES` fine-tunes a random-init encoder on 90 % of train and is scored on
  the held-out 10 % (`finetune.holdout`); the best held-out top-1 wins (ties: the first listed). The test split
  is never read.
* `online-vs-offline` (issue 28; the first design, issue 20, is finished in docs/results/online-vs-offline-40ep and
  not continued by this code): online clusters with CAPI's recipe against offline tokens and MAE, with MAE's decoder
  and CAPI's cross-attention predictor, student and EMA teacher evaluated (kmim/studies/online.py).
* `all`: every study.

Every choice (arms, seeds, budget from the preset, verdict rules in `verdicts`) is fixed in code before any run.
A study resumes where it stopped: a finished arm has a record in DIR/records/ and is never redone; an interrupted
pretraining continues from its checkpoint. DIR/report.md, DIR/results.csv and DIR/*.png are rewritten at the end.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from kmim.config import RunConfig, config_to_dict
from kmim.dist import is_main, on_main
from kmim.errors import KmimError
from kmim.runs import NEUTRAL, RunDir, flat
from kmim.studies.common import DRAWS, SHOTS, Arm, Layout
from kmim.studies.finetune_recipe import RECIPES
from kmim.studies.study_rules import ARMS
from kmim.studies.vs_mae import FINETUNE_SEEDS, PROBE_AT

if TYPE_CHECKING:
    import torch
    import torch.nn

STUDIES = tuple(ARMS)  # "all" runs them in this order


def layout(out: Path, config: str | None, runs: str | None = None) -> Layout:
    """The study's layout: the main K is its preset's tokenizer.k (the study's overrides do not move it: every arm
    sets its own K), the runs folder DIR/runs or `--runs` (see Layout)."""
    from kmim.config import load_config
    from kmim.studies.online import cross_overrides

    cfg = load_config(config, [])
    k, cross = cfg.tokenizer.k, cross_overrides(cfg.model)
    if runs is None:
        return Layout(out / "runs", k, cross=cross)
    return Layout(Path(runs), k, shared=True, cross=cross)


def arms(study: str, out: Path, lay: Layout | None = None) -> list[Arm]:
    """The fixed arms of a study, declared in its own file (dependencies first: feature tokenizers read earlier
    arms' encoders)."""
    if study not in ARMS:
        raise KmimError(f"study {study!r} is unknown: use one of {', '.join(STUDIES)} or all")
    return ARMS[study](lay or Layout(out / "runs"))


# ---- one arm ------------------------------------------------------------------------------------------------------


def arm_config(
    arm: Arm, out: Path, config: str | None, *, overrides: list[str], lay: Layout | None = None
) -> RunConfig:
    """The arm's config: the preset and overrides, the arm's own settings, and its seed for both the pretraining and
    the tokenizer fit (K-means sample and init, or the VQ-VAE), so the seed spread includes the tokenizer's noise."""
    from kmim.resolve import load_run_config

    return load_run_config(config, arm_overrides(arm, out, overrides, config=config, lay=lay))


def arm_overrides(
    arm: Arm, out: Path, overrides: list[str], *, config: str | None = None, lay: Layout | None = None
) -> list[str]:
    """The study's overrides, then the arm's. A per-kind tokenizer option among the study's (tokenizer.vq.epochs=1
    for a quick study) reaches only the arms whose tokenizer reads it."""
    from kmim.config import load_config
    from kmim.resolve import check_run_config, unused_option_groups

    lay = lay or Layout(out / "runs")
    ov = [
        *overrides,
        *arm.overrides,
        f"train.seed={arm.seed}",
        f"tokenizer.seed={arm.seed}",
        f"out_dir={lay.runs}",
        f"name={lay.run_name(arm)}",
    ]
    unused = tuple(f"tokenizer.{g}." for g in unused_option_groups(check_run_config(load_config(config, ov))))
    return [o for o in ov if not (o in overrides and o.startswith(unused))]


def check_arm_data(study: str, arm: Arm, cfg: RunConfig) -> None:
    """What an arm needs of the data, checked for every arm before the first trains (a study stopped at arm 9 by a
    K too large for the data wastes the 8 before it): global batches no larger than the training split (pretraining,
    and fine-tuning / the probes that train through the encoder where the study runs them), K no larger than the
    patches its tokens or prototypes are drawn from, at least SHOTS training images per class (low-shot), and 2 per
    class where a probe holds some out (the attentive probe of online-vs-offline)."""
    from kmim.resolve import check_batch, check_k_patches, training_counts

    n, least = training_counts(cfg)
    sections = ["train", *(["finetune"] if study in ("vs-mae", "finetune-recipe") else [])]
    sections += {"lars": ["eval"], "attentive": ["attentive"]}.get(cfg.eval.probe, [])
    sections += ["attentive"] if study == "online-vs-offline" else []
    for section in dict.fromkeys(sections):
        batch = check_batch(cfg, section).global_batch
        if batch > n:
            raise KmimError(
                f"arm {arm.name}: the {section} global batch {batch} exceeds the {n} training images: lower it"
            )
    check_k_patches(cfg)
    need = 2 if study == "online-vs-offline" else 0
    need = max(need, SHOTS if study not in ("finetune-recipe",) else 0)
    if least < need:
        raise KmimError(
            f"arm {arm.name}: a class has {least} training images; this study needs {need} per class "
            f"({'low-shot takes ' + str(SHOTS) if need == SHOTS else 'the attentive probe holds one out'}): add images"
        )


def check_records_belong(study: str, out: Path, todo: list[Arm]) -> None:
    """A study folder continues only with the arms that wrote it: records of arms the study no longer has (a folder
    of an earlier design, or of another study) are refused in one line."""
    names = {a.name for a in todo}
    stale = sorted(p.stem for p in (out / "records").glob("*.json") if p.stem not in names)
    if stale:
        raise KmimError(
            f"{out} holds records of arms study {study} does not have ({', '.join(stale[:3])}"
            f"{', …' if len(stale) > 3 else ''}): it was written by an earlier design or another study; "
            "choose another --out"
        )


def check_same_config(arm: Arm, cfg: RunConfig, record: dict[str, Any], *, out: Path) -> None:
    """A study continues only under the config its finished arms ran with: the first field that differs is named."""
    from kmim.config import load_config

    old = flat(config_to_dict(load_config(None, (), base=record["config"])))  # the current schema and defaults
    new = flat(config_to_dict(cfg))
    for key in new:
        if key not in NEUTRAL and old.get(key) != new[key]:
            raise KmimError(
                f"{out} holds arm {arm.name} run with {key}={old.get(key)!r}, this command gives "
                f"{new[key]!r}: a study continues only under the preset and overrides it started with "
                "(see its report's command), or choose another --out"
            )


def evaluate_arm(cfg: RunConfig, run_dir: Path, curve: bool, *, progress: bool) -> dict[str, Any]:
    """kNN, linear probe, low-shot probe (eval.pool feature), TCAS / NMI of the run's tokenizer, and optionally kNN
    at every numbered checkpoint and the probe at those in PROBE_AT. The linear probe is the preset's eval.probe:
    AdamW on the cached features (the CPU presets), or MAE's LARS probe through the encoder, split over the
    processes and resumable (the ImageNet presets), as `kmim probe` runs it."""
    from kmim.eval import load_encoder, split_features
    from kmim.eval.lowshot import low_shot_probe

    enc, info = load_encoder(run_dir)
    (trf, try_), (tef, tey), n_cls = split_features(enc, cfg, _device(cfg), progress=progress)
    tr, te = trf[cfg.eval.pool], tef[cfg.eval.pool]
    knn, probe = _knn_and_probe(cfg, (tr, try_), (te, tey), n_cls=n_cls, probe=cfg.eval.probe == "adamw")
    if probe is None:
        probe = _encoder_probe(enc, cfg, Path(info["checkpoint"]), progress=progress)
    low = low_shot_probe(tr, try_, te, test_labels=tey, shots=SHOTS, draws=DRAWS, seed=cfg.train.seed)
    rec = {
        "knn_top1": knn,
        "linear_probe_top1": probe,
        "linear_probe": cfg.eval.probe,
        "lowshot_top1": low["mean"],
        "lowshot_std": low["std"],
        "n_test": len(tey),
        **_token_scores(cfg, run_dir, progress),
    }
    say(progress, f"evaluated: kNN {knn:.1f}, linear probe {probe:.1f}, low-shot {low['mean']:.1f}")
    if curve:
        rec.update(_curves(cfg, run_dir, progress=progress))
    return rec


def say(progress: bool, line: str) -> None:
    """One plain line of an arm's progress (the log of a long study shows each stage, not only the bars)."""
    if progress and is_main():
        print(f"  {line}", flush=True)


def _encoder_probe(encoder: torch.nn.Module, cfg: RunConfig, checkpoint: Path, *, progress: bool) -> float:
    """The linear probe that trains through the encoder (eval.probe=lars: MAE's; attentive: CAPI's head), with
    its checkpoint in the run directory: top-1 (%)."""
    from kmim.eval.attentive import attentive_probe
    from kmim.eval.lars import lars_probe
    from kmim.eval.resume import probe_checkpoint

    ck = probe_checkpoint(checkpoint, cfg, "student")
    run = lars_probe if cfg.eval.probe == "lars" else attentive_probe
    return cast(float, run(encoder, cfg, _device(cfg), progress=progress, checkpoint=ck)["top1"])


def _knn_and_probe(
    cfg: RunConfig,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    n_cls: int,
    probe: bool = True,
) -> tuple[float, float | None]:
    """kNN top-1 and (when `probe`) linear-probe top-1 on cached features train = (X, y), test = (X, y)."""
    from kmim.eval.knn import knn_top1
    from kmim.eval.probe import linear_probe, probe_recipe

    e = cfg.eval
    knn = knn_top1(train, test, num_classes=n_cls, k=e.knn.k, temperature=e.knn.temperature, device=_device(cfg))
    if not probe:
        return knn, None
    res = linear_probe(
        *train,
        test[0],
        test_labels=test[1],
        num_classes=n_cls,
        lrs=list(e.linear.lrs),
        **probe_recipe(e, cfg.train.seed),
    )
    return knn, res["top1"]


def _token_scores(cfg: RunConfig, run_dir: Path, progress: bool) -> dict[str, Any]:
    """TCAS and NMI of the run's tokenizer over the training split (for online targets: the learned one)."""
    if cfg.train.target not in ("tokens", "online-clusters"):
        return {"tcas": None, "nmi": None}
    from kmim.eval.tokens import token_counts
    from kmim.fit import load_tokenizer, training_split
    from kmim.metrics import nmi, tcas_from_counts

    data = training_split(cfg)
    tok = load_tokenizer(run_dir / "tokenizer.pt")
    n_cls, workers = len(data.info.classes), cfg.data.num_workers
    counts = token_counts(tok, data.ds, n_cls, device=_device(cfg), progress=False, num_workers=workers)
    return {"tcas": tcas_from_counts(counts), "nmi": nmi(counts)}


def _inertia(run_dir: Path) -> float | None:
    """The K-means inertia its tokenizer file records (None for kinds without one)."""
    from kmim.fit import load_tokenizer

    return cast("float | None", load_tokenizer(run_dir / "tokenizer.pt").meta.fit.get("inertia"))


def probe_epochs(cfg: RunConfig) -> set[int]:
    """The saved epochs (multiples of train.save_every) nearest PROBE_AT of train.epochs."""
    t = cfg.train
    return {max(t.save_every, round(f * t.epochs / t.save_every) * t.save_every) for f in PROBE_AT}


def _curves(cfg: RunConfig, run_dir: Path, *, progress: bool = False) -> dict[str, list[list[float]]]:
    """{"curve": [[epoch, kNN top-1]] at every numbered checkpoint, "probe_curve": [[epoch, probe top-1]] at those
    in PROBE_AT}."""
    from kmim.eval import load_encoder, split_features

    knn_pts, probe_pts = [], []
    ckpts = RunDir(run_dir).numbered_checkpoints()
    for ckpt in ckpts:
        epoch = int(ckpt.stem.split("-")[1])
        enc = load_encoder(ckpt)[0]
        (trf, try_), (tef, tey), n_cls = split_features(enc, cfg, _device(cfg), progress=False)
        pool, probed = cfg.eval.pool, epoch in probe_epochs(cfg)
        knn, probe = _knn_and_probe(
            cfg, (trf[pool], try_), (tef[pool], tey), n_cls=n_cls, probe=probed and cfg.eval.probe == "adamw"
        )
        if probed and probe is None:
            probe = _encoder_probe(enc, cfg, ckpt, progress=False)
        knn_pts.append([epoch, knn])
        if probe is not None:
            probe_pts.append([epoch, probe])
        say(progress, f"epoch {epoch}: kNN {knn:.1f}" + (f", linear probe {probe:.1f}" if probe is not None else ""))
    return {"curve": knn_pts, "probe_curve": probe_pts}


def _finetune(run_dir: Path, progress: bool) -> float:
    """Fine-tune the run's encoder with its config's `finetune` section into RUN-finetune (resumed if a checkpoint
    is there, reused if finished); returns finetune_top1."""
    from kmim.launch import continue_run, start

    ft = RunDir(run_dir.parent / f"{run_dir.name}-finetune")
    status = ft.status()
    if status == "finished":
        return cast(float, ft.read_results()["finetune_top1"])
    if status == "unfinished":
        return cast(float, continue_run(str(ft.path), [], progress)[1]["finetune_top1"])
    return cast(float, start(str(run_dir), None, [], progress=progress, overwrite=ft.path.exists())[1]["finetune_top1"])


def _device(cfg: RunConfig) -> str:
    """run.device, resolved to this process's GPU under torchrun."""
    from kmim.dist import local_device, resolve_device

    return str(local_device(resolve_device(cfg.run.device)))


def run_recipe_arm(
    arm: Arm, cfg: RunConfig, ov: list[str], *, config: str | None, out: Path, progress: bool
) -> dict[str, Any]:
    """finetune-recipe: fine-tune a random-init encoder (seed finetune.seed) with the candidate (`cfg`, built from
    `config` and `ov`), scored on the held-out part of train."""
    from kmim.launch import continue_run, start
    from kmim.runinfo import write_json

    t0 = time.perf_counter()
    run = RunDir(Path(cfg.out_dir) / cfg.name)
    if run.status() == "unfinished":
        res = continue_run(str(run.path), [], progress)[1]
    else:
        res = start(None, config, ov, progress=progress, overwrite=run.path.exists())[1]
    rec = {
        "arm": arm.name,
        "group": arm.group,
        "seed": cfg.finetune.seed,
        "held_out_top1": res["finetune_top1"],
        "held_out_best_top1": res["finetune_best_top1"],
        "overrides": list(RECIPES[arm.name]),
        "finetune_s": round(time.perf_counter() - t0, 1),
        "config": config_to_dict(cfg),
    }
    on_main(lambda: write_json(out / "records" / f"{arm.name}.json", rec))  # rank 0 writes
    return rec


def _target_curves(run_dir: Path) -> dict[str, Any]:
    """Per epoch (1-based) from metrics.jsonl: [epoch, TCAS, NMI, usage] of the targets' hard ids on the fixed
    subset (for online targets: the teacher's argmax ids, the tokenizer's `encode`), [epoch, fraction of ids used,
    perplexity] of the masked targets, and for online targets [epoch, fraction of ids and perplexity of the teacher's
    argmax before Sinkhorn, agreement of the targets' argmax with it, the student's masked top-1 on the targets, the
    targets' mean entropy in nats (log K when uniform)]."""
    from kmim.runinfo import read_jsonl

    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "epoch_loss" in r]
    tcas = [[r["epoch"] + 1, r["tok_tcas"], r["tok_nmi"], r["tok_usage"]] for r in rows if "tok_tcas" in r]
    used = [[r["epoch"] + 1, r["targets_used"], r["targets_perplexity"]] for r in rows if "targets_used" in r]
    teacher = [  # online targets: the teacher's argmax before Sinkhorn, and the targets' agreement with it
        [
            r["epoch"] + 1,
            r["teacher_used"],
            r["teacher_perplexity"],
            r["targets_agree_teacher"],
            r["masked_top1"],
            r["assignment_entropy"],
        ]
        for r in rows
        if "teacher_used" in r
    ]
    return {"tcas_curve": tcas, "targets_curve": used, "teacher_curve": teacher}


def run_arm(
    arm: Arm,
    out: Path,
    config: str | None,
    *,
    overrides: list[str],
    curve: bool,
    progress: bool,
    study: str = "",
    lay: Layout | None = None,
) -> dict[str, Any]:
    """Train (or continue, or reuse from the shared pool) and evaluate one arm; its record is written atomically, so
    a finished arm is final."""
    from kmim.runinfo import git_sha, write_json
    from kmim.studies.demo import pretrain_or_resume

    cfg = arm_config(arm, out, config, overrides=overrides, lay=lay)
    if arm.name in RECIPES:
        ov = arm_overrides(arm, out, overrides, config=config, lay=lay)
        return run_recipe_arm(arm, cfg, ov, config=config, out=out, progress=progress)
    t0 = time.perf_counter()
    run_dir = pretrain_or_resume(cfg, progress)
    t1 = time.perf_counter()
    tokens, online = cfg.train.target == "tokens", cfg.train.target == "online-clusters"
    rec = {
        "arm": arm.name,
        "group": arm.group,
        "seed": arm.seed,
        "tokenizer": "online-clusters" if online else cfg.tokenizer.name,
        "k": cfg.tokenizer.k if tokens or online else None,
        "target": cfg.train.target,
        "tokenizer_seed": cfg.tokenizer.seed if tokens or online else None,
        "tokenizer_inertia": _inertia(run_dir) if tokens else None,
        **evaluate_arm(cfg, run_dir, curve, progress=progress),
        "train_s": round(t1 - t0, 1),
        "eval_s": round(time.perf_counter() - t1, 1),
        "config": config_to_dict(cfg),
    }
    if study == "online-vs-offline":
        from kmim.studies import online as online_study

        t2 = time.perf_counter()
        rec.update(online_study.evaluate(cfg, run_dir, device=_device(cfg), progress=progress))
        rec.update(_target_curves(run_dir))
        teacher = rec.get("teacher_knn_top1")
        say(
            progress,
            f"attentive probe {rec['attentive_top1']:.1f}" + (f", teacher kNN {teacher:.1f}" if teacher else ""),
        )
        rec["eval_s"] = round(rec["eval_s"] + time.perf_counter() - t2, 1)
    if curve and arm.seed in FINETUNE_SEEDS:  # vs-mae
        t2 = time.perf_counter()
        rec["finetune_top1"] = _finetune(run_dir, progress)
        rec["finetune_s"] = round(time.perf_counter() - t2, 1)
        say(progress, f"fine-tuned: top-1 {rec['finetune_top1']:.1f}")
    rec["code"] = {"pretrained": RunDir(run_dir).commits(), "evaluated": git_sha()}  # commits ("-dirty": edits)
    on_main(lambda: write_json(out / "records" / f"{arm.name}.json", rec))  # rank 0 writes
    return rec


def rebuild_read_runs(
    arm: Arm, todo: list[Arm], out: Path, *, config: str | None, overrides: list[str], lay: Layout, progress: bool
) -> None:
    """Pretrain again, from its arm's config (the same command and seed), a recorded arm's run that `arm` reads
    (tokenizer.encoder=<that run>) when its folder has no checkpoints/last.pt: the runs are not committed, so a study
    continued on another machine has the records but not the runs."""
    from kmim.studies.demo import pretrain_or_resume

    enc = arm_config(arm, out, config, overrides=overrides, lay=lay).tokenizer.encoder
    for dep in todo:
        run = lay.runs / lay.run_name(dep)
        if not enc or dep is arm or Path(enc).resolve() != run.resolve() or (run / "checkpoints" / "last.pt").is_file():
            continue
        if (out / "records" / f"{dep.name}.json").is_file():
            say(progress, f"{arm.name} reads {run}, which is not here: pretraining it again ({dep.name}'s config)")
            pretrain_or_resume(arm_config(dep, out, config, overrides=overrides, lay=lay), progress)


# ---- the study ----------------------------------------------------------------------------------------------------


def run_study(
    study: str,
    out: Path,
    config: str | None,
    *,
    overrides: list[str],
    progress: bool = True,
    runs: str | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) every arm of `study` and write its report; returns the records. Under torchrun every
    process runs every arm together (pretraining, features, fine-tuning split over them; the small probes on
    cached features repeated on each) and rank 0 alone writes the records and the report. `runs`: a run pool
    shared with the round's other studies (Layout)."""
    from kmim.paths import check_folder_writable

    check_folder_writable(out)
    lay = layout(out, config, runs)
    todo = arms(study, out, lay)
    check_records_belong(study, out, todo)
    for arm in todo:  # every config is checked before the first run starts, finished arms against their records
        cfg = arm_config(arm, out, config, overrides=overrides, lay=lay)
        path = out / "records" / f"{arm.name}.json"
        if path.is_file():
            check_same_config(arm, cfg, json.loads(path.read_text()), out=out)
        else:
            check_arm_data(study, arm, cfg)
    records = []
    for i, arm in enumerate(todo):
        path = out / "records" / f"{arm.name}.json"
        if path.is_file():
            records.append(json.loads(path.read_text()))
            continue
        if progress and is_main():
            print(f"[{study}] arm {i + 1}/{len(todo)}: {arm.name}", flush=True)
        rebuild_read_runs(arm, todo, out, config=config, overrides=overrides, lay=lay, progress=progress)
        curve = study == "vs-mae"
        records.append(
            run_arm(arm, out, config, overrides=overrides, curve=curve, progress=progress, study=study, lay=lay)
        )
    on_main(lambda: write_report(study, out, records, config=config, overrides=overrides, runs=runs))
    return records


def verdicts(study: str, records: list[dict[str, Any]]) -> list[str]:
    """The conclusions, by rules fixed before any run (see each rule's text)."""
    from kmim.studies import study_rules

    return study_rules.RULES[study](records)


def _code_line(records: list[dict[str, Any]]) -> str:
    """Which commits pretrained and evaluated the arms ("-dirty": with uncommitted edits), from the records that say
    (records written before 2026-12-07 do not)."""
    said = [r["code"] for r in records if r.get("code")]
    trained = list(dict.fromkeys(c for code in said for c in code["pretrained"]))
    evaluated = list(dict.fromkeys(code["evaluated"] for code in said))
    unsaid = f"; {len(records) - len(said)} records do not say" if len(said) < len(records) else ""
    return f"Code: pretrained under {_shas(trained)}, evaluated under {_shas(evaluated)}{unsaid}."


def _shas(shas: list[Any]) -> str:
    return ", ".join(str(s)[:7] + ("-dirty" if str(s).endswith("-dirty") else "") for s in shas) or "–"


def write_report(
    study: str,
    out: Path,
    records: list[dict[str, Any]],
    *,
    config: str | None,
    overrides: list[str],
    runs: str | None = None,
) -> None:
    from kmim.runinfo import environment, write_text
    from kmim.studies import study_rules

    cols = [
        "arm",
        "group",
        "seed",
        "target",
        "tokenizer",
        "k",
        "tokenizer_seed",
        "tokenizer_inertia",
        "tcas",
        "nmi",
        "knn_top1",
        "linear_probe_top1",
        "lowshot_top1",
        "lowshot_std",
        "attentive_top1",
        "finetune_top1",
        "held_out_top1",
        "train_s",
        "eval_s",
        "finetune_s",
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(records)
    write_text(out / "results.csv", buf.getvalue())
    env = environment()
    pool = ["--runs", runs] if runs else []
    cmd = " ".join(["kmim study", study, "--out", str(out), *pool, *(["-c", config] if config else []), *overrides])
    head = [
        f"# Study `{study}`",
        "",
        f"Command: `{cmd}` (rerun it to continue; finished arms are kept). kmim {env['kmim']}, git {env['git_sha']}, "
        f"torch {env['torch']}, {env['cpu']}, {env['threads']} threads. Seeds and "
        f"arms are fixed in {study_rules.ARMS[study].__module__.replace('.', '/')}.py; the budget is the preset's "
        "(train.epochs and the rest in each arm's config, in the records).",
        "",
        _code_line(records),
        "",
        f"## Verdicts (rules fixed before the runs: {study_rules.RULES[study].__module__.replace('.', '/')}.py)",
        "",
        *[f"- {v}" for v in verdicts(study, records)],
        "",
    ]
    body = study_rules.TABLES[study](records, out)
    total = sum(r.get("train_s", 0.0) + r.get("eval_s", 0.0) + r.get("finetune_s", 0.0) for r in records)
    tail = ["", f"Wall time of the arms: {total / 60:.1f} min in all (pretraining + evaluation + fine-tuning).", ""]
    write_text(out / "report.md", "\n".join([*head, *body, *tail]))
