"""`llmkit verify`, `export`, `import` and `average` beside what a user would run instead.

    .venv/bin/python benchmarks/artifacts.py                     # Llama-shaped `small` (about 100M parameters)
    .venv/bin/python benchmarks/artifacts.py --preset mini --rounds 5

Every side is a whole process (start-up and imports count, as they do for a user), timed for wall
and CPU time (process and children); the sides alternate over --rounds rounds and the median of
the per-round ratios is printed. The checkpoints are random models of --preset with a BPE
tokenizer trained on tinyshakespeare, written as llmkit checkpoint artifacts (fp32 safetensors).

  verify   `llmkit verify CKPT`: re-hash every file of the manifest and recompute the fingerprint
           vs `sha256sum -c` over the same files and digests (coreutils)
  export   `llmkit export CKPT -o HF` (a transformers directory: config, safetensors, tokenizer,
           generation config)
           vs a script around transformers: read the safetensors, rename the keys (llmkit's
           mapping, `llmkit.model.hf_weights`: a user's own would cost the same), `from_config`,
           `load_state_dict`, `save_pretrained` for the model and a `PreTrainedTokenizerFast`
  import   `llmkit import HF -o CKPT` (a checkpoint artifact: weights, tokenizer folder, manifest)
           vs `AutoModelForCausalLM.from_pretrained(HF)` and safetensors `save_file` of its
           state dict, the tokenizer copied beside it
  average  `llmkit average A B C -o AVG` (a uniform model soup, checked for one architecture)
           vs a script: `safetensors.torch.load_file` of each, the sum divided by three,
           `save_file` (what mergekit's `linear` method computes, without its install)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("LLMKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
LLMKIT = [sys.executable, "-m", "llmkit"]

EXPORT_SCRIPT = """
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from llmkit.model.gpt import ModelConfig
from llmkit.model.hf_config import to_hf_config
from llmkit.model.hf_weights import to_hf_state
import json
src, out = Path(sys.argv[1]), Path(sys.argv[2])
config = ModelConfig(**json.loads((src / "model_config.json").read_text()))
with torch.device("meta"):  # no random initialisation of weights about to be replaced
    model = AutoModelForCausalLM.from_config(to_hf_config(config))
missing, unexpected = model.load_state_dict(to_hf_state(load_file(str(src / "model.safetensors")), config), strict=False, assign=True)
assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
model.tie_weights()
model.save_pretrained(out)
PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer" / "tokenizer.json")).save_pretrained(out)
"""

IMPORT_SCRIPT = """
import shutil, sys
from pathlib import Path
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
src, out = Path(sys.argv[1]), Path(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(src)
out.mkdir(parents=True, exist_ok=True)
state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight" or not model.config.tie_word_embeddings}
save_file(state, str(out / "model.safetensors"))
shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
"""

AVERAGE_SCRIPT = """
import sys
from safetensors.torch import load_file, save_file
*sources, out = sys.argv[1:]
states = [load_file(s + "/model.safetensors") for s in sources]
save_file({k: sum(s[k] for s in states) / len(states) for k in states[0]}, out)
"""


def make_checkpoints(root: Path, preset: str, family: str, vocab: int, count: int) -> list[Path]:
    import torch

    from generate import shaped_model

    from llmkit import artifacts
    from llmkit.data.corpus import write_corpus_artifact
    from llmkit.model.io import TOKENIZER_DIR, save_weights
    from llmkit.model.records import CheckpointStats
    from llmkit.tokenizer.train import TokenizerTrainConfig, train_tokenizer

    text = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")
    corpus = write_corpus_artifact(root / "corpus", [p for p in text.split("\n\n") if p.strip()]).path
    tokenizer = train_tokenizer([corpus], root / "tokenizer", TokenizerTrainConfig(vocab_size=vocab))
    checkpoints = []
    for seed in range(count):
        model = shaped_model(preset, family, vocab)
        if seed:
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(0.01 * seed)
        out = root / f"checkpoint-{seed}"
        with artifacts.create(out, "checkpoint") as build:
            save_weights(model, build.dir)
            shutil.copytree(tokenizer, build.dir / TOKENIZER_DIR, ignore=shutil.ignore_patterns("manifest.json"))
            build.config = {"model": model.config.to_dict()}
            build.seed = seed
            build.stats = CheckpointStats(params=model.num_params(), model=model.config.to_dict()).to_dict()
        checkpoints.append(out)
    return checkpoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--family", choices=("llama", "gpt2"), default="llama")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("verify", "export", "import", "average"), action="append",
                        help="run only these comparisons (repeatable)")
    args = parser.parse_args()

    from paired import alternate, report, timed_process

    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        a, b, c = make_checkpoints(root, args.preset, args.family, args.vocab_size, 3)
        weights_mb = (a / "model.safetensors").stat().st_size / 1e6
        print(f"{args.family} `{args.preset}` checkpoints of {weights_mb:,.0f} MB (fp32 safetensors), vocabulary "
              f"{args.vocab_size}; {args.rounds} rounds, whole processes")
        manifest = json.loads((a / "manifest.json").read_text())
        files = {**manifest["files"], **manifest.get("state_files", {})}
        (root / "sums.txt").write_text("".join(f"{digest}  {a / name}\n" for name, digest in files.items()))
        hf = root / "hf"
        timed_process([*LLMKIT, "export", str(a), "-o", str(hf)])
        comparisons = {
            "verify": {"llmkit": [*LLMKIT, "verify", str(a)], "sha256sum": ["sha256sum", "--quiet", "-c", str(root / "sums.txt")]},
            "export": {"llmkit": [*LLMKIT, "export", str(a), "-o", str(root / "out-export"), "--force"],
                       "transformers": [sys.executable, "-c", EXPORT_SCRIPT, str(a), str(root / "ref-export")]},
            "import": {"llmkit": [*LLMKIT, "import", str(hf), "-o", str(root / "out-import"), "--force"],
                       "transformers": [sys.executable, "-c", IMPORT_SCRIPT, str(hf), str(root / "ref-import")]},
            "average": {"llmkit": [*LLMKIT, "average", str(a), str(b), str(c), "-o", str(root / "out-average"), "--force"],
                        "safetensors": [sys.executable, "-c", AVERAGE_SCRIPT, str(a), str(b), str(c),
                                        str(root / "ref-average.safetensors")]},
        }
        os.environ.setdefault("LLMKIT_PROGRESS", "0")
        ratios = {}
        for name, commands in comparisons.items():
            if args.only and name not in args.only:
                continue
            print(f"\n{name}: {' '.join(Path(x).name if x.startswith('/') else x for x in commands['llmkit'][2:])}")
            runs = alternate({side: lambda r, command=command: timed_process(command) for side, command in commands.items()},
                             args.rounds)
            ratios[name] = report(runs, weights_mb, "MB")
        if "average" in ratios:
            check_average(root, a, b, c)
        if "export" in ratios:
            check_export(root)
        if "import" in ratios:
            check_import(root)


def check_export(root: Path) -> None:
    """Both sides of `export` wrote the same transformers weights, to the bit. The reference names them with
    llmkit's own mapping (to_hf_state), so this checks the writing, not the mapping (tests/test_interop.py
    checks that against transformers' own forward pass)."""
    import torch
    from safetensors.torch import load_file

    ours, theirs = (load_file(str(root / side / "model.safetensors")) for side in ("out-export", "ref-export"))
    assert set(ours) == set(theirs), sorted(set(ours) ^ set(theirs))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), [k for k in theirs if not torch.equal(ours[k], theirs[k])]
    print(f"  export: both sides wrote the same {len(theirs)} tensors (named by llmkit's mapping on both sides)")


def check_import(root: Path) -> None:
    """Both sides of `import` read the same weights: llmkit's checkpoint, named back as transformers
    names it (llmkit.model.hf_weights.to_hf_state), equals the reference's state dict."""
    import torch
    from safetensors.torch import load_file

    from llmkit.model.gpt import ModelConfig
    from llmkit.model.hf_weights import to_hf_state

    imported = root / "out-import"
    config = ModelConfig(**json.loads((imported / "model_config.json").read_text()))
    ours = to_hf_state(load_file(str(imported / "model.safetensors")), config)
    theirs = load_file(str(root / "ref-import" / "model.safetensors"))
    shared = set(ours) & set(theirs)
    assert shared and set(theirs) <= set(ours), sorted(set(theirs) - set(ours))
    assert all(torch.equal(ours[k], theirs[k]) for k in shared), [k for k in shared if not torch.equal(ours[k], theirs[k])]
    print(f"  import: both sides read the same {len(shared)} tensors")


def check_average(root: Path, *sources: Path) -> None:
    """Both sides of `average` wrote the same tensors (to float rounding: the sums' order may differ)."""
    import torch
    from safetensors.torch import load_file

    ours = load_file(str(root / "out-average" / "model.safetensors"))
    theirs = load_file(str(root / "ref-average.safetensors"))
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in theirs)
    assert set(ours) == set(theirs) and worst < 1e-6, worst
    assert not torch.equal(ours[next(iter(ours))], load_file(str(sources[0] / "model.safetensors"))[next(iter(ours))])
    print(f"  average: both sides wrote the same tensors (largest difference {worst:.1e})")


if __name__ == "__main__":
    main()
