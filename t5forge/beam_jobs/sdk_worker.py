"""Beam's SDK worker process for the local runner, ending quietly on the terminal's Ctrl-C.

Ctrl-C sends SIGINT to every process in the terminal's foreground group, Beam's worker
processes included. Beam's own worker dies printing a KeyboardInterrupt traceback to the
terminal. This worker exits at once with status `INTERRUPTED_EXIT_CODE` and no output; the job's
process, interrupted by the same Ctrl-C, removes what the job created and says so (and the CLI
keeps Beam's reports of the lost workers quiet). Ignoring SIGINT instead would leave the workers
running, and the job's process waiting for them.
"""

import contextlib
import os
import signal
import sys

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, a shell's status for a process ended by Ctrl-C
# A directory where each worker leaves a file named by its pid, so that the job's process can
# stop its workers when it alone is interrupted (job._workers_stopped_on_interrupt).
PID_DIR_ENV = "T5FORGE_WORKER_PID_DIR"
_INTERRUPTED_MARK = "interrupted"


def stop_workers(pid_dir: str) -> None:
    """Marks `pid_dir` interrupted, then sends SIGINT to every worker recorded there.

    In this order, a worker either recorded its pid before the mark (and is signalled) or
    finds the mark when it looks for it after recording (and exits by itself).
    """
    with contextlib.suppress(OSError):
        open(os.path.join(pid_dir, _INTERRUPTED_MARK), "w").close()
        for name in os.listdir(pid_dir):
            if name.isdigit():
                with contextlib.suppress(OSError):
                    os.kill(int(name), signal.SIGINT)


def _exit_quietly(signum=None, frame=None):
    os._exit(INTERRUPTED_EXIT_CODE)  # no traceback, no cleanup: the work is being abandoned


def _record_pid() -> None:
    pid_dir = os.environ.get(PID_DIR_ENV)
    if not pid_dir:
        return
    try:
        open(os.path.join(pid_dir, str(os.getpid())), "w").close()
    except OSError:
        return  # the job is already over and has removed the directory
    if os.path.exists(os.path.join(pid_dir, _INTERRUPTED_MARK)):
        _exit_quietly()


def main() -> None:
    signal.signal(signal.SIGINT, _exit_quietly)
    _record_pid()
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
