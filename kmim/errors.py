"""User-facing errors: one line naming the file or field and the fix; the CLI turns them into exit code 2."""


class KmimError(Exception):
    """An input or configuration problem the user can fix. Its message is printed as one line."""


def one_line(e: BaseException) -> str:
    """The user-facing line of an error. A KmimError raised in a DataLoader worker comes back wrapped in torch's
    "Caught KmimError in DataLoader worker process N ... Original Traceback ..." text: keep its original message."""
    text = str(e).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].removeprefix("kmim.errors.KmimError: ")
    return " ".join(text.split("\n"))


PREEMPTED_EXIT = 75  # EX_TEMPFAIL (sysexits.h), "try again later": a run stopped on a preemption signal after writing
# its checkpoint; scripts/slurm/kmim.sbatch requeues the job on it (kmim.engine.preempt)


class Preempted(Exception):
    """A run stopped on a preemption signal after writing its checkpoint; the message says where and how to go on."""
