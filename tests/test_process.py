"""The test harness's `PollerProcess.expect`: its timeout is for the whole wait."""
from __future__ import annotations

import sys
import threading

from process import PollerProcess

CHATTY = ("import sys, time\n"
          "print('status on http://127.0.0.1:1/', file=sys.stderr, flush=True)\n"
          "while True:\n"
          "    print('something else', file=sys.stderr, flush=True)\n"
          "    time.sleep(0.05)\n")


def test_a_process_logging_other_lines_does_not_extend_the_timeout(tmp_path) -> None:
    # the wrapper runs CHATTY instead of the poller (the poller's command line is its ignored arguments)
    process = PollerProcess(tmp_path / "unused.ini", prefix=[sys.executable, "-c", CHATTY])
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            process.expect("never logged", timeout=1.0)
        except AssertionError as exc:
            outcome.append(exc)
    waiter = threading.Thread(target=wait, daemon=True)
    try:
        waiter.start()
        waiter.join(15)  # was: never over (every line restarted the 1 s wait)
        assert not waiter.is_alive(), "expect() still waiting while the process logs other lines"
        assert "no log line matching 'never logged' within 1.0s" in str(outcome[0])
        assert process.address == "127.0.0.1:1"
    finally:
        process.proc.kill()
        process.proc.wait()
