"""Run many entry-script command lines cheaply: this process imports the scripts' modules once, then each command
line runs in a forked child exactly as ``python SCRIPT ARGV...`` would (``SCRIPT`` executed as ``__main__``, its
stdout and stderr in files, the process's exit status the script's). The error tests use it to spare a 4-second
torch/timm import per case.

    python tests/fork_runner.py SPEC.json     (SPEC: [{"script", "argv", "stdout", "stderr"[, "env"]}, ...])

``env``: variables set in that child only (read by the code the script runs, not by the shared imports).

prints the list of exit statuses as JSON.
"""
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import run_class_finetuning  # noqa: E402,F401  (the imports every child shares)
import run_mask_pretrain  # noqa: E402,F401


def _child(case: dict) -> int:
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    os.environ.update(case.get("env", {}))
    sys.argv = [case["script"], *case["argv"]]
    try:
        runpy.run_path(str(REPO / case["script"]), run_name="__main__")
        status = 0
    except SystemExit as stop:  # what the interpreter does with it
        if stop.code is None or isinstance(stop.code, int):
            status = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return status


def main() -> None:
    statuses = []
    for case in json.loads(Path(sys.argv[1]).read_text()):
        pid = os.fork()
        if pid == 0:
            os._exit(_child(case))
        statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    print(json.dumps(statuses))


if __name__ == "__main__":
    main()
