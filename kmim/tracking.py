"""Experiment tracking beside metrics.jsonl: TensorBoard event files in every run directory (`RUN/tensorboard/`,
when the `tensorboard` package is installed: `pip install 'kmim[tracking]'`), and Weights & Biases when
`run.wandb=true` (offline by default: `wandb sync RUN/wandb/...` uploads later; `run.wandb_mode=online` logs
live). The W&B run id is kept in the checkpoint, so `--resume` continues the same W&B run. Rank 0 only; nothing
here needs a network unless the user asks for it.

Every metrics row is logged as scalars named `<group>/<key>`: rows with a `step` (per optimizer step: loss, lr,
img_s, grad_norm) under `train/`, epoch rows under `epoch/` (epoch_loss, img_per_s, and for token targets the
target health: targets_used, targets_perplexity, masked_top1), evaluation rows under `eval/`; the x axis is the
optimizer step.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, cast

from kmim.config import RunConfig, config_to_dict

SKIP = ("step", "epoch")  # coordinates, not values


def scalars(row: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """The TensorBoard group of a metrics row and its numeric values."""
    group = "train" if "step" in row else ("eval" if any(k.startswith("test_") for k in row) else "epoch")
    values = {k: float(v) for k, v in row.items() if k not in SKIP and isinstance(v, (int, float))}
    return group, values


class Tracker:
    """TensorBoard (and optionally W&B) writer of one run; a no-op on ranks other than 0."""

    def __init__(
        self, run_dir: Path, cfg: RunConfig, main: bool, *, wandb_id: str | None = None, resume_step: int | None = None
    ) -> None:
        """`resume_step`: the optimizer steps a resumed run's checkpoint holds; TensorBoard drops the events after
        them (work lost after the checkpoint, about to be redone), as metrics.jsonl does."""
        self.tb: Any = None
        self.wandb: Any = None
        self.wandb_id = wandb_id
        if not main:
            return
        t = cfg.run
        if t.tensorboard:
            self.tb = _summary_writer(run_dir / "tensorboard", None if resume_step is None else resume_step + 1)
        if t.wandb:
            self.wandb = _wandb_run(run_dir, cfg, wandb_id)
            self.wandb_id = self.wandb.id

    def log(self, row: dict[str, Any], step: int) -> None:
        group, values = scalars(row)
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{group}/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"{group}/{k}": v for k, v in values.items()}, step=step)

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _summary_writer(folder: Path, purge_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print(
            "note: tensorboard is not installed, so no event files are written (pip install 'kmim[tracking]')",
            file=sys.stderr,
        )
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def _wandb_run(run_dir: Path, cfg: RunConfig, run_id: str | None) -> Any:
    from kmim.errors import KmimError

    try:
        import wandb
    except ImportError:
        raise KmimError("run.wandb=true but wandb is not installed: pip install 'kmim[tracking]'") from None
    t = cfg.run
    return wandb.init(
        project=t.wandb_project,
        name=cfg.name,
        id=run_id,
        resume="allow",
        mode=cast(Literal["online", "offline", "disabled", "shared"], t.wandb_mode),
        dir=str(run_dir),
        config=config_to_dict(cfg),
    )
