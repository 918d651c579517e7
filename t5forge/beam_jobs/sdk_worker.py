"""Beam's SDK worker process for the local runner, ending quietly on the terminal's Ctrl-C.

Ctrl-C sends SIGINT to every process in the terminal's foreground group, Beam's worker
processes included. Beam's own worker dies printing a KeyboardInterrupt traceback to the
terminal. This worker exits at once with status `INTERRUPTED_EXIT_CODE` and no output; the job's
process, interrupted by the same Ctrl-C, removes what the job created and says so (and the CLI
keeps Beam's reports of the lost workers quiet). Ignoring SIGINT instead would leave the workers
running, and the job's process waiting for them.
"""

import os
import signal
import sys

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, a shell's status for a process ended by Ctrl-C


def _exit_quietly(signum, frame):
    os._exit(INTERRUPTED_EXIT_CODE)  # no traceback, no cleanup: the work is being abandoned


def main() -> None:
    signal.signal(signal.SIGINT, _exit_quietly)
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
