"""Test-only launcher: ``mmer-rt serve`` with a Recognizer whose graph run can be made to fail or to wait.

Run by tests/test_serve_http.py as its own server process: ``python tests/serve_hooked.py --gate PATH <serve
arguments>``. A batch holding the transcript FAIL_TEXT raises inside the graph run (an internal failure); a batch
holding HOLD_TEXT waits until the file PATH exists (so a test can keep a batch running while it queues others).
Nothing of this is in mmer_rt: production code has no fault hook.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmer_rt.recognizer import Recognizer  # noqa: E402
from mmer_rt.serve import command  # noqa: E402

FAIL_TEXT = "fail this batch"
HOLD_TEXT = "hold this batch"


def hooked_recognizer(gate: Path) -> type[Recognizer]:
    class Hooked(Recognizer):
        def predict_decoded(self, decoded, errors="raise"):
            texts = {item.text for item in decoded}
            if FAIL_TEXT in texts:
                raise RuntimeError("injected failure inside the graph run")
            if HOLD_TEXT in texts:
                deadline = time.monotonic() + 60
                while not gate.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
            return super().predict_decoded(decoded, errors)

    return Hooked


def main(argv: list[str]) -> None:
    gate = Path(argv[argv.index("--gate") + 1])
    rest = argv[:argv.index("--gate")] + argv[argv.index("--gate") + 2:]
    args = command.parser().parse_args(rest)
    import logging

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recognizer = command.load_recognizer(args, hooked_recognizer(gate))
    command.serve(recognizer, command.serve_config(args), args.host, args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
