"""Runs lrlab commands in-process under an address-space limit and a per-command alarm; prints one JSON
line per command: exit status, stderr, seconds. Used by test_hostile.py as `python hostile_cli.py CASES.json`."""

import contextlib
import io
import json
import resource
import signal
import sys
import time
import traceback

LIMIT_BYTES = 5 * 2**30


class TookTooLong(BaseException):
    pass


def _alarm(signal_number, frame):
    raise TookTooLong


def _warm_up() -> None:
    """Import what the commands import and run one meta-device forward, so a case's seconds are its own work."""
    import sklearn.datasets  # noqa: F401 - the digits data set needs it
    import lrlab.assembly
    import lrlab.engine
    import lrlab.report  # noqa: F401

    from lrlab.models import model_factory, training_bytes

    training_bytes(model_factory("cnn", {"width": 4}, channels=1, image_size=(8, 8), num_classes=10, check=False), 1, (8, 8), 64)
    lrlab.assembly.load_run_data(lrlab.config.RunConfig(dataset="digits"))


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))
    from lrlab.cli import main as lrlab

    _warm_up()

    cases = json.load(open(sys.argv[1]))
    signal.signal(signal.SIGALRM, _alarm)
    for case in cases:
        error, output = io.StringIO(), io.StringIO()
        started = time.perf_counter()
        signal.alarm(case.get("seconds", 30))
        try:
            with contextlib.redirect_stderr(error), contextlib.redirect_stdout(output):
                status = lrlab(case["argv"])
        except TookTooLong:
            status = "timeout"
        except BaseException:  # noqa: BLE001 - a traceback is what the test is looking for
            status = "traceback"
            error.write(traceback.format_exc())
        finally:
            signal.alarm(0)
        print(json.dumps({"id": case["id"], "status": status, "stderr": error.getvalue(),
                          "seconds": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main()
