"""``python -m qstar_jax.run`` whose process 0 alone meets a full disk as its first stage
starts (the writer is the only process that writes, so it alone meets one): how a
multi-process run ends when one process fails and the others do not. The arguments are
``qstar_jax.run``'s."""

from __future__ import annotations

import errno

from qstar_jax import run
from qstar_jax.parallel import is_writer


def full_disk_on_process_0(stage):
    def stage_on_a_full_disk(ctx):
        if is_writer():
            raise OSError(errno.ENOSPC, "No space left on device", str(ctx.out / "policy"))
        return stage(ctx)
    return stage_on_a_full_disk


if __name__ == "__main__":
    first = run.load_config(None).stages[0]
    run.STAGE_FUNCTIONS[first] = full_disk_on_process_0(run.STAGE_FUNCTIONS[first])
    run.command()
