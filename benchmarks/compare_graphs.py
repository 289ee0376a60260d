"""Interleaved A/B timing of one graph from several model directories, on the same synthetic inputs.

    python -m benchmarks.compare_graphs OLD_MODEL_DIR NEW_MODEL_DIR [--graph audio_encoder] [--precision int8]
        [--seconds 5] [--batch 1] [--rounds 12] [--threads 2]

For export work: whether a change to the graphs made them faster, measured the way this project measures
(rounds alternate between the directories, so a noisy neighbour slows all of them alike; the median and the
fastest round per directory are printed, with each graph's max |difference| from the first directory's output).
Rows of a batch are 100, 95, 90 ... % of the clip length, padded as the runtime pads them.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np

from mmer_rt.audio import SAMPLE_RATE, audio_feeds
from mmer_rt.modeldir import GRAPH_NAMES, ModelManifest, verified_graph_path
from mmer_rt.session import open_session

from .micro import interleaved_rounds


def graph_inputs(session, graph: str, seconds: float, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic inputs for one graph's ``session``: audio of the given length, 30 tokens, and hidden states as
    wide as the graph takes them."""
    rng = np.random.default_rng(seed)
    widths = {node.name: node.shape[-1] for node in session.get_inputs()}
    if graph == "audio_encoder":
        waves = [0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE * (1 - 0.05 * row))).astype(np.float32)
                 for row in range(batch)]
        return audio_feeds(waves, list(widths))  # either format version, by the graph's input names
    tokens = np.ones((batch, 30), dtype=np.int64)
    if graph == "text_encoder":
        return {"input_ids": rng.integers(3, 300, (batch, 30)).astype(np.int64), "attention_mask": tokens}
    frames = int(seconds * 50) - 1
    return {"hidden_states": rng.standard_normal((batch, frames, widths["hidden_states"])).astype(np.float32),
            "frame_mask": np.ones((batch, frames), dtype=np.int64),
            "token_embeddings": rng.standard_normal((batch, 30, widths["token_embeddings"])).astype(np.float32),
            "attention_mask": tokens}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dirs", type=Path, nargs="+")
    parser.add_argument("--graph", choices=GRAPH_NAMES, default="audio_encoder")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    sessions = []
    for model_dir in args.model_dirs:
        entry = ModelManifest.read(model_dir).variants[args.precision].graphs[args.graph]
        sessions.append(open_session(verified_graph_path(model_dir, entry), "cpu", args.threads))
    feeds = graph_inputs(sessions[0], args.graph, args.seconds, args.batch)
    first_outputs = [session.run(None, feeds)[0] for session in sessions]  # also the warm-up
    times = interleaved_rounds({index: partial(session.run, None, feeds) for index, session in enumerate(sessions)},
                               args.rounds).values()
    print(f"{args.graph} {args.precision}, {args.batch} x {args.seconds:g} s, {args.threads} threads, "
          f"{args.rounds} interleaved rounds")
    for model_dir, output, rounds in zip(args.model_dirs, first_outputs, times):
        difference = float(np.abs(output - first_outputs[0]).max())
        print(f"  {str(model_dir):<40} median {1000 * np.median(rounds):8.1f} ms  fastest {1000 * min(rounds):8.1f} ms"
              f"  max |diff| {difference:.2e}")


if __name__ == "__main__":
    main()
