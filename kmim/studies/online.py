"""`kmim study online-vs-offline`, second design (issue 28, declared 2026-12-07 before any of its arms ran): online
clusters trained with CAPI's recipe against offline tokens, with MAE's decoder and with CAPI's cross-attention
predictor, the student and the EMA teacher evaluated. Its arms, its extra evaluation, its verdict rules and tables.

Arms (2 seeds, K = 50 for every tokenizer, the preset's budget):
* `mae-normpix`, `kmim-pixels-k50`, `kmim-maefeat-k50` (K-means on the patch features of that seed's MAE run) and
  `online-k50`: CAPI's online clusters with its student head (model.head=cosine), its EMA schedule cut at 0.8 of the
  cosine (train.online.momentum_truncate, the default), position-wise Sinkhorn-Knopp (the default), teacher momentum
  0.99 (ONLINE_MOMENTUM: this budget is ~1,000-2,400 steps, CAPI's 0.999 is a 1,000-step horizon);
* the same four with `-cross`: CAPI's predictor (model.decoder=cross) as wide as the encoder, half as deep, with the
  encoder's heads, predicting CROSS_FRACTION of the masked patches;
* `online-k50-allsk`: online-k50 with Sinkhorn-Knopp once over all patches of the batch (positionwise_sk=false),
  which measures whether a small preset's fixed-position backgrounds need it.
In a round's shared pool (`--runs`, the Imagenette-64 round) the arms are those issue 28 declares there: MAE and
K-MIM PIXEL (read from the round's own runs, seeds 0-1), online-k50, and the cross variants of the three.

Every arm is evaluated on the student (kNN and linear probe at both pools, low-shot and the attentive probe at
eval.pool); an online arm's EMA teacher (what CAPI evaluates) gets the same, under `teacher_*` keys, and its record
says which network each number is from (`networks`). The online arms log the teacher's hard argmax usage before
Sinkhorn-Knopp, the targets' agreement with it and TCAS / NMI of the teacher's ids on 1,000 fixed training images
every epoch (train.health_images).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kmim.studies.common import DRAWS, SHOTS, Arm, Layout

if TYPE_CHECKING:
    from kmim.config import ModelConfig, RunConfig

ONLINE_K = 50  # the paper's K, for every tokenizer of the study on both datasets (the first design used 200)
CROSS_FRACTION = 0.25  # of the masked patches, the share the cross predictor predicts: at 48 masked patches per
# image CAPI's 5 % would leave 2 targets per image (256 per step); a quarter, as timed in benchmarks/bench_decoder.py
ONLINE_MOMENTUM = "train.online.momentum=0.99"  # declared before the first design ran: CAPI's 0.999 is an EMA
# horizon of 1,000 steps in a 500,000-step run; these budgets have 1,000-2,400 steps
HEALTH = "train.health_images=1000"
OFFLINE = ("mae-normpix", f"kmim-pixels-k{ONLINE_K}", f"kmim-maefeat-k{ONLINE_K}")
ONLINE = f"online-k{ONLINE_K}"
METRICS = (
    ("knn_top1", "kNN"),
    ("linear_probe_top1", "linear probe"),
    ("attentive_top1", "attentive probe"),
    ("lowshot_top1", "low-shot (10/class)"),
)


def cross_overrides(model: ModelConfig) -> tuple[str, ...]:
    """CAPI's predictor geometry for the preset's encoder: as wide, half as deep (at least 1 block), same heads."""
    from kmim.models import resolve_spec

    spec = resolve_spec(model)
    return (
        "model.decoder=cross",
        f"model.decoder_dim={spec.embed_dim}",
        f"model.decoder_depth={max(1, spec.depth // 2)}",
        f"model.decoder_heads={spec.num_heads}",
        f"model.predict_fraction={CROSS_FRACTION}",
    )


def groups(runs: Path, seed: int, *, cross: tuple[str, ...], shared: bool) -> dict[str, tuple[tuple[str, ...], str]]:
    """{group: (overrides, run name in a shared pool or "")} for one seed, the MAE run first (a feature tokenizer
    reads its encoder)."""
    k = ONLINE_K
    tok = ("train.target=tokens", f"tokenizer.k={k}")
    online = ("train.target=online-clusters", f"tokenizer.k={k}", ONLINE_MOMENTUM, "model.head=cosine", HEALTH)
    base: dict[str, tuple[tuple[str, ...], str]] = {
        "mae-normpix": (("train.target=pixels", "train.norm_pix=true"), f"mae-normpix-s{seed}"),
        f"kmim-pixels-k{k}": ((*tok, "tokenizer.name=kmeans-pixels"), f"pixels-k{k}-s{seed}"),
        f"kmim-maefeat-k{k}": (
            (*tok, "tokenizer.name=kmeans-features", f"tokenizer.encoder={runs / f'mae-normpix-s{seed}'}"),
            "",
        ),
        ONLINE: (online, ""),
    }
    if shared:
        del base[f"kmim-maefeat-k{k}"]
    out = dict(base)
    out.update({f"{g}-cross": ((*ov, *cross), "") for g, (ov, _) in base.items()})
    if not shared:
        out[f"{ONLINE}-allsk"] = ((*online, "train.online.positionwise_sk=false"), "")
    return out


def arms(lay: Layout) -> list[Arm]:
    """The groups of `groups`, 2 seeds (CAPI's predictor sized for the study's preset, or the default model's)."""
    from kmim.config import ModelConfig

    cross = lay.cross or cross_overrides(ModelConfig())
    return [
        Arm(f"{g}-s{s}", g, ov, s, run=r)
        for s in (0, 1)
        for g, (ov, r) in groups(lay.runs, s, cross=cross, shared=lay.shared).items()
    ]


# ---- evaluation ---------------------------------------------------------------------------------------------------


def network_scores(cfg: RunConfig, run_dir: Path, network: str, *, device: str, progress: bool) -> dict[str, Any]:
    """One network of a run: kNN and linear probe at every pool ({pool: {knn, probe}}), low-shot and the attentive
    probe at eval.pool."""
    from kmim.eval import load_encoder, split_features
    from kmim.eval.attentive import attentive_probe
    from kmim.eval.lowshot import low_shot_probe
    from kmim.eval.resume import probe_checkpoint
    from kmim.studies.study import _knn_and_probe

    enc, info = load_encoder(run_dir, network)
    (trf, try_), (tef, tey), n_cls = split_features(enc, cfg, device, progress=progress)
    pools = {}
    for pool in trf:
        knn, probe = _knn_and_probe(cfg, (trf[pool], try_), (tef[pool], tey), n_cls=n_cls)
        pools[pool] = {"knn": knn, "probe": probe}
    tr, te = trf[cfg.eval.pool], tef[cfg.eval.pool]
    low = low_shot_probe(tr, try_, te, test_labels=tey, shots=SHOTS, draws=DRAWS, seed=cfg.train.seed)
    ck = probe_checkpoint(Path(info["checkpoint"]), cfg, network, probe="attentive")  # a preempted study continues
    att = attentive_probe(enc, cfg, device, progress=progress, checkpoint=ck)
    return {
        "knn_top1": pools[cfg.eval.pool]["knn"],
        "linear_probe_top1": pools[cfg.eval.pool]["probe"],
        "lowshot_top1": low["mean"],
        "attentive_top1": att["top1"],
        "attentive_lr": att["lr"],
        "attentive_weight_decay": att["weight_decay"],
        "pools": pools,
    }


def kept_scores(cfg: RunConfig, run_dir: Path, network: str, *, device: str, progress: bool) -> dict[str, Any]:
    """`network_scores`, kept in RUN/probes/scores-<network>.json under the attentive probe's key (the encoder file,
    the data and eval sections, the seed), so that a study stopped during the teacher's probes does not redo the
    student's (~9 min an arm at Imagenette-64). A file under another key is recomputed and replaced."""
    from kmim.dist import on_main
    from kmim.engine.checkpoint import resolve_checkpoint
    from kmim.eval.resume import probe_checkpoint
    from kmim.runinfo import write_json
    from kmim.studies.study import say

    ck = probe_checkpoint(resolve_checkpoint(run_dir), cfg, network, probe="attentive")
    path = run_dir / "probes" / f"scores-{network}.json"
    key = json.loads(json.dumps(ck.key)) if ck is not None else None  # as the file holds it
    if key is not None and path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            say(progress, f"{network}: probes kept in {path}")
            return dict(kept["scores"])
    scores = network_scores(cfg, run_dir, network, device=device, progress=progress)
    if key is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        on_main(lambda: write_json(path, {"key": key, "scores": scores}))
    return scores


def evaluate(cfg: RunConfig, run_dir: Path, *, device: str, progress: bool) -> dict[str, Any]:
    """The study's extra numbers for one arm: the student's at both pools and its attentive probe, and for an
    online arm its teacher's (`teacher_*`); `networks` names what was evaluated (each network's numbers are kept
    in the run folder as they land: `kept_scores`)."""
    student = kept_scores(cfg, run_dir, "student", device=device, progress=progress)
    rec: dict[str, Any] = {
        "networks": ["student"],
        "attentive_top1": student["attentive_top1"],
        "attentive_lr": student["attentive_lr"],
        "attentive_weight_decay": student["attentive_weight_decay"],
        "pools": {"student": student["pools"]},
    }
    if cfg.train.target == "online-clusters":
        teacher = kept_scores(cfg, run_dir, "teacher", device=device, progress=progress)
        rec["networks"].append("teacher")
        rec["pools"]["teacher"] = teacher.pop("pools")
        rec.update({f"teacher_{k}": v for k, v in teacher.items()})
    return rec


# ---- verdicts (declared before any arm of this design ran) --------------------------------------------------------


def _gap(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of a minus mean of b, and the SE sqrt(sd_a^2/n_a + sd_b^2/n_b) (nan with one value on a side)."""
    gap = float(np.mean(a) - np.mean(b))
    se = float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))) if min(len(a), len(b)) > 1 else np.nan
    return gap, se


def _word(gap: float, se: float, *, ahead: str, behind: str) -> str:
    return ahead if gap > 2 * se else behind if gap < -2 * se else "not resolved"


def _values(records: list[dict[str, Any]], group: str, key: str) -> list[float]:
    return [float(r[key]) for r in records if r["group"] == group and r.get(key) is not None]


def _online_vs_offline(records: list[dict[str, Any]], present: set[str]) -> list[str]:
    """Rule 1: online minus each offline method, per decoder, metric and network of the online arm: "online ahead"
    above 2 SE, "offline ahead" / "MAE ahead" below -2 SE, "not resolved" otherwise."""
    out = []
    for suffix, decoder in (("", "MAE decoder"), ("-cross", "cross predictor")):
        online = ONLINE + suffix
        if online not in present:
            continue
        for key, label in METRICS:
            parts = []
            for network, prefix in (("student", ""), ("teacher", "teacher_")):
                a = _values(records, online, prefix + key)
                for other in (g + suffix for g in OFFLINE if g + suffix in present):
                    gap, se = _gap(a, _values(records, other, key))
                    behind = "MAE ahead" if other.startswith("mae") else "offline ahead"
                    word = _word(gap, se, ahead="online ahead", behind=behind)
                    parts.append(f"{network} − {other} = {gap:+.1f} (SE {se:.1f}): **{word}**")
            out.append(f"{label}, {decoder}: online " + "; ".join(parts) + ".")
    return out


def _decoders(records: list[dict[str, Any]], present: set[str]) -> list[str]:
    """Rule 2: the cross predictor minus MAE's decoder for each target (student): "cross ahead" above 2 SE, "MAE
    decoder ahead" below -2 SE."""
    out = []
    for key, label in METRICS[:2]:
        parts = []
        for g in (g for g in (*OFFLINE, ONLINE) if g in present and f"{g}-cross" in present):
            gap, se = _gap(_values(records, f"{g}-cross", key), _values(records, g, key))
            word = _word(gap, se, ahead="cross ahead", behind="MAE decoder ahead")
            parts.append(f"{g} {gap:+.1f} (SE {se:.1f}): **{word}**")
        if parts:
            out.append(f"{label}, cross predictor − MAE decoder: " + "; ".join(parts) + ".")
    return out


def _teacher_vs_student(records: list[dict[str, Any]], present: set[str]) -> list[str]:
    """Rule 3: an online arm's teacher minus its student: "teacher ahead" above 2 SE, "student ahead" below."""
    out = []
    for g in sorted(g for g in present if g.startswith(ONLINE)):
        parts = []
        for key, label in METRICS:
            gap, se = _gap(_values(records, g, f"teacher_{key}"), _values(records, g, key))
            word = _word(gap, se, ahead="teacher ahead", behind="student ahead")
            parts.append(f"{label} {gap:+.1f} (SE {se:.1f}): **{word}**")
        out.append(f"{g}, teacher − student: " + "; ".join(parts) + ".")
    return out


def _sinkhorn(records: list[dict[str, Any]], present: set[str]) -> list[str]:
    """Rule 4: Sinkhorn-Knopp over all patches minus position-wise (student and teacher): "all-patch ahead" above
    2 SE, "position-wise ahead" below."""
    alt = f"{ONLINE}-allsk"
    if alt not in present or ONLINE not in present:
        return []
    parts = []
    for key, label in METRICS[:2]:
        for prefix in ("", "teacher_"):
            gap, se = _gap(_values(records, alt, prefix + key), _values(records, ONLINE, prefix + key))
            word = _word(gap, se, ahead="all-patch ahead", behind="position-wise ahead")
            parts.append(f"{label} ({prefix.rstrip('_') or 'student'}) {gap:+.1f} (SE {se:.1f}): **{word}**")
    return ["Sinkhorn over all patches − position-wise: " + "; ".join(parts) + "."]


def _collapse(records: list[dict[str, Any]], present: set[str]) -> list[str]:
    """Rule 5: a collapse is named when the teacher's own argmax (before Sinkhorn-Knopp) uses under 10 % of the K
    ids in the last epoch, in any seed (the Sinkhorn targets are balanced by construction and cannot show one)."""
    out = []
    for g in sorted(g for g in present if g.startswith(ONLINE)):
        last = [r["teacher_curve"][-1] for r in records if r["group"] == g and r.get("teacher_curve")]
        if not last:
            continue
        used = [row[1] for row in last]
        word = "**collapsed**" if min(used) < 0.1 else "not collapsed"
        lo, hi = f"{100 * min(used):.0f}", f"{100 * max(used):.0f}"
        span = lo if lo == hi else f"{lo}–{hi}"
        out.append(
            f"{g}: the teacher's argmax uses {span} % of the K ids in the last "
            f"epoch (perplexity {np.mean([row[2] for row in last]):.1f} of {ONLINE_K}): {word} (rule: under 10 %)."
        )
    return out


def rules(records: list[dict[str, Any]]) -> list[str]:
    from kmim.studies.common import noise as _noise

    present = {r["group"] for r in records}
    if not any(g.startswith(ONLINE) for g in present):
        return ["No online arm has a record yet: no verdict."]
    out = [
        *_online_vs_offline(records, present),
        *_decoders(records, present),
        *_teacher_vs_student(records, present),
        *_sinkhorn(records, present),
        *_collapse(records, present),
    ]
    return [*out, f"Noise: {_noise(records)}; 2 seeds per method (± is their sd)."]


# ---- tables -------------------------------------------------------------------------------------------------------


def _cell(v: list[float]) -> str:
    if not v:
        return "–"
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return f"{np.mean(v):.1f} ± {sd:.1f}"


def _pool_cell(recs: list[dict[str, Any]], network: str, *, pool: str, key: str) -> str:
    return _cell([r["pools"][network][pool][key] for r in recs if network in r.get("pools", {})])


def tables(records: list[dict[str, Any]], out: Path) -> list[str]:
    from kmim.studies.common import groups as _groups

    lines = [
        "## Methods (mean ± sd over seeds; the headline pool is the preset's eval.pool)",
        "",
        "| method | network | TCAS | NMI | kNN | linear probe | attentive probe | low-shot |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    by = _groups(records)
    for g, recs in by.items():
        tc = [r["tcas"] for r in recs if r.get("tcas") is not None]
        nmi = [r["nmi"] for r in recs if r.get("nmi") is not None]
        t = f"{np.mean(tc):.4f}" if tc else "–"
        n = f"{np.mean(nmi):.4f}" if nmi else "–"
        for network, prefix in (("student", ""), ("teacher", "teacher_")):
            if network not in recs[0].get("networks", ["student"]):
                continue
            cells = [_cell([r[prefix + k] for r in recs]) for k, _ in METRICS]
            lines.append(f"| {g} | {network} | {t} | {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "TCAS / NMI: of each run's tokenizer over the training split (online: the teacher's argmax ids at the end).",
        "",
        "## Both pools (kNN / linear probe, mean ± sd over seeds)",
        "",
        "| method | network | kNN cls | kNN mean | probe cls | probe mean |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for g, recs in by.items():
        for network in recs[0].get("networks", ["student"]):
            cells = [_pool_cell(recs, network, pool=p, key=k) for k in ("knn", "probe") for p in ("cls", "mean")]
            lines.append(f"| {g} | {network} | " + " | ".join(cells) + " |")
    return [*lines, *_collapse_table(records, out)]


def _collapse_table(records: list[dict[str, Any]], out: Path) -> list[str]:
    """The last epoch's collapse measures of each online arm, and their curves (teacher argmax usage, agreement)."""
    online = [r for r in records if r["group"].startswith(ONLINE) and r.get("teacher_curve")]
    if not online:
        return []
    lines = [
        "",
        "## Online targets in the last epoch (mean over seeds)",
        "",
        "| method | teacher ids used | teacher perplexity | targets' argmax = teacher's | student masked top-1 (%) | "
        f"targets' entropy (log K = {np.log(ONLINE_K):.2f}) | TCAS (1,000 images) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    from kmim.studies.common import groups as _groups
    from kmim.studies.common import pyplot as _pyplot
    from kmim.studies.common import save as _save

    for g, recs in _groups(online).items():
        last = np.mean([r["teacher_curve"][-1][1:] for r in recs], axis=0)
        tcas = [r["tcas_curve"][-1][1] for r in recs if r.get("tcas_curve")]
        tc = f"{np.mean(tcas):.4f}" if tcas else "–"
        cells = f"{100 * last[0]:.0f} % | {last[1]:.1f} | {100 * last[2]:.0f} % | {last[3]:.1f} | {last[4]:.2f}"
        lines.append(f"| {g} | {cells} | {tc} |")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in online:
        pts, label = r["teacher_curve"], f"{r['group']} s{r['seed']}"
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], label=label)
        axes[1].plot([p[0] for p in pts], [p[3] for p in pts], label=label)
        curve = r.get("tcas_curve") or []
        axes[2].plot([p[0] for p in curve], [p[1] for p in curve], label=label)
    names = ("teacher argmax: fraction of K ids used", "targets' argmax = teacher's", "TCAS")
    for ax, y in zip(axes, names, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(y)
    axes[0].legend(fontsize=7)
    _save(fig, out / "online-over-epochs.png")
    return [
        *lines,
        "",
        "TCAS over epochs is of the teacher's argmax ids on 1,000 fixed training images (not of the soft targets).",
        "",
        "![online targets over epochs](online-over-epochs.png)",
    ]
