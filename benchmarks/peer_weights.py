"""Save the benchmark model's encoders with save_pretrained for optimum-onnx; prints the folder it wrote.

    python3 -m benchmarks.peer_weights [--quick]

scripts/optimum_env.sh runs this in the main environment, then benchmarks/optimum_export.py in .venv-optimum on
the printed folder, so the peer exports exactly the weights the other routes run.
"""

from __future__ import annotations

import argparse

from .artifacts import artifacts_for


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick mode's tiny model instead of base size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(artifacts_for("quick" if args.quick else "base", args.seed).peer_weights())


if __name__ == "__main__":
    main()
