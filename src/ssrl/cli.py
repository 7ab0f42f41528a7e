"""The ssrl command: use a trained system (results/<run>/<system>/model.pt).

  ssrl embed  --model M [-o out.npz] FILES...     embeddings of audio files (.npz)
  ssrl embed  --model M [-o out.npz] --scp wav.scp
  ssrl verify --model M A.wav B.wav               score one pair, decide at the EER threshold
  ssrl export --model M --onnx out.onnx           ECAPA system -> ONNX, checked with onnxruntime
  ssrl compare RUN_A RUN_B                        two runs: config differences, results side by side

Exit status: 0 on success (verify: whether the decision is accept or reject;
read it from the output), 1 on an error (bad or missing input, no threshold,
failed export check), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from . import __version__

EPILOG = "Run 'ssrl COMMAND --help' for a command's options. Library: ssrl.inference."

EMBED_HELP = """\
Embed whole audio files with a trained system and write an .npz embedding file
(arrays 'utts' (N,) and 'embeddings' (N, dim) float32; ssrl.fileio.read_embeddings).

Utterance ids are the file stems (a/spk1-001.wav -> spk1-001), or the ids of a
Kaldi wav.scp given with --scp. Preprocessing and batching are the pipeline's
extraction (docs/method.md §5): whole utterance (WavLM systems: first 100 s), peak
normalisation, pre-emphasis, length-bucketed padded batches; the embeddings are
those of the model's EMA teacher (model file key eval_state) unless --which says
otherwise.

example:
  ssrl embed --model results/demo/ssrl/model.pt -o emb.npz data/*.wav
"""

VERIFY_HELP = """\
Score two audio files with a trained system and decide whether they come from the
same speaker.

The score is the cosine similarity of the two embeddings. The decision threshold
is, by default, the EER threshold that the scoring stage stored beside the model
in <model dir>/metrics/<list>.json (key eer_threshold): --trials LIST picks the
list when the system was scored on several. When that threshold was measured on
AS-norm scores, the pair is AS-normalised the same way, against the system's
train-set embeddings <model dir>/emb/train.npz. --threshold X uses X with the
plain cosine score instead.

Accept when score >= threshold. The exit status is 0 for both accept and reject
(read the decision from the output; --json for machine-readable output) and
non-zero on errors, e.g. when no metrics file exists and no --threshold is given.

Input checks: a silent file (every sample zero) is refused; a near-silent one
(RMS below -60 dBFS) or one shorter than its header says (a truncated
download) is scored, with a warning line beside the decision (--json: key
"warnings").

example:
  ssrl verify --model results/demo/ssrl/model.pt a.wav b.wav --json
"""

EXPORT_HELP = """\
Export an ECAPA (log-mel front-end) system to ONNX. WavLM systems are not supported.

The graph's input 'wave' is a float32 (batch, samples) array of 16 kHz mono audio,
every row a whole utterance of the same length (no padding), already
PRE-PROCESSED by the caller: peak-normalised (x / max|x|), then pre-emphasised
(y[0] = x[0], y[n] = x[n] - 0.97 x[n-1]). Its output 'embedding' is (batch, dim)
float32; compare embeddings by cosine similarity. The mel spectrogram is computed
in the graph by a strided convolution with a fixed DFT basis (equal to the
torch.stft front-end up to float rounding).

After writing, the command runs the graph with onnxruntime on two input shapes,
prints the largest absolute difference from the PyTorch model, and fails (no file
written) if it exceeds 1e-4. Needs the onnx and onnxruntime packages
(pip install 'ssrl[export]').

example:
  ssrl export --model results/demo/ssrl/model.pt --onnx ssrl.onnx
"""


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


COMPARE_HELP = """\
Compare two runs of the workflow: how they were made and what came out.

RUN_A and RUN_B are run folders (results/<run>, holding provenance.json) or run
names (looked up as results/<name>). Printed: both runs' commit, config hash, dates,
profile and hardware (from provenance.json); every config key whose value differs
(dotted keys, A -> B, after all --configfile merges); differing software versions;
then, for the main, ablations and WavLM tables (tables/<table>.csv), each system's
EER, minDCF, label quality and training cost in A and B, with B - A.

example:
  ssrl compare results/demo /scratch/other_checkout/results/demo
"""


def _add_model_options(p: argparse.ArgumentParser, device: bool = True) -> None:
    p.add_argument(
        "--model",
        "-m",
        required=True,
        metavar="MODEL.pt",
        help="model file of a trained system (<run>/<system>/model.pt)",
    )
    p.add_argument(
        "--which",
        choices=("eval_state", "teacher", "student"),
        default="eval_state",
        help="network in the model file to use (default: eval_state, the EMA teacher)",
    )
    if device:
        p.add_argument(
            "--device",
            default="auto",
            metavar="{auto,cpu,cuda,cuda:N}",
            help="where to run the model (default: auto = CUDA when available, else CPU)",
        )
        p.add_argument(
            "--max-seconds",
            type=_positive_float,
            metavar="S",
            help="embed only the first S seconds of each file (default: whole files; 100 s for WavLM systems)",
        )


def build_parser() -> argparse.ArgumentParser:
    """The ``ssrl`` argument parser (subcommands embed, verify, export, compare)."""
    ap = argparse.ArgumentParser(
        prog="ssrl", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--version", action="version", version=f"ssrl {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("embed", help="embed audio files into an .npz file", description=EMBED_HELP, formatter_class=raw)
    _add_model_options(p)
    p.add_argument("files", nargs="*", metavar="FILE", help="audio files (wav, flac, m4a, ...)")
    p.add_argument("--scp", metavar="WAV.SCP", help="Kaldi wav.scp ('utt path' per line) instead of FILEs")
    p.add_argument(
        "--output",
        "-o",
        default="embeddings.npz",
        metavar="OUT.npz",
        help="embedding file to write (default: embeddings.npz)",
    )
    p.add_argument(
        "--batch-seconds",
        type=_positive_float,
        default=240.0,
        metavar="S",
        help="padded audio per batch, seconds (default: 240)",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=64, metavar="N", help="files per batch at most (default: 64)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="DataLoader worker processes reading audio (default: 0, in the main process)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    p.set_defaults(handler=_cmd_embed, parser=p)

    p = sub.add_parser(
        "verify",
        help="score two audio files and decide same/different speaker",
        description=VERIFY_HELP,
        formatter_class=raw,
    )
    _add_model_options(p)
    p.add_argument("enroll", metavar="A", help="first audio file")
    p.add_argument("test", metavar="B", help="second audio file")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--trials", metavar="LIST", help="use the EER threshold of trial list LIST (<model dir>/metrics/LIST.json)"
    )
    which.add_argument(
        "--threshold",
        type=_finite_float,
        metavar="X",
        help="accept when the cosine score >= X (ignores the metrics files)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(handler=_cmd_verify, parser=p)

    p = sub.add_parser(
        "export",
        help="export an ECAPA system to ONNX (checked with onnxruntime)",
        description=EXPORT_HELP,
        formatter_class=raw,
    )
    _add_model_options(p, device=False)
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="ONNX file to write")
    p.add_argument(
        "--opset", type=_positive_int, default=None, metavar="N", help="ONNX opset version, 11 to 20 (default: 17)"
    )
    p.set_defaults(handler=_cmd_export, parser=p)

    p = sub.add_parser(
        "compare",
        help="two runs: config differences and results side by side",
        description=COMPARE_HELP,
        formatter_class=raw,
    )
    p.add_argument("run_a", metavar="RUN_A", help="run folder (results/<run>) or run name")
    p.add_argument("run_b", metavar="RUN_B", help="run folder (results/<run>) or run name")
    p.set_defaults(handler=_cmd_compare, parser=p)
    return ap


# --------------------------------------------------------------------------- commands


def _load(args: argparse.Namespace, device: str = "cpu"):
    from .models import load_speaker_model

    return load_speaker_model(args.model, device=device, which=args.which)


def _max_seconds(args: argparse.Namespace, model) -> float | None:
    from .models import default_max_seconds

    return args.max_seconds if args.max_seconds is not None else default_max_seconds(model)


def _cmd_embed(args: argparse.Namespace) -> int:
    from .extract import embed_files, resolve_device, utterance_ids
    from .fileio import write_embeddings
    from .manifest import read_wav_scp

    if bool(args.files) == bool(args.scp):
        args.parser.error("give audio FILEs or --scp WAV.SCP (exactly one of them)")
    if Path(args.output).suffix != ".npz":
        args.parser.error(f"--output must end in .npz, got {args.output}")
    if args.workers < 0:
        args.parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.scp:
        scp = read_wav_scp(args.scp)
        utts, paths = list(scp), list(scp.values())
    else:
        utts, paths = utterance_ids(args.files), list(args.files)
    device = resolve_device(args.device)
    model = _load(args, device)
    emb = embed_files(
        model,
        utts,
        paths,
        device=device,
        max_batch_seconds=args.batch_seconds,
        max_batch_size=args.batch_size,
        workers=args.workers,
        max_seconds=_max_seconds(args, model),
        progress=not args.quiet,
    )
    write_embeddings(args.output, utts, emb)
    print(f"ssrl embed: wrote {emb.shape[0]} embeddings of dimension {emb.shape[1]} to {args.output}", file=sys.stderr)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .extract import resolve_device
    from .inference import Threshold, find_threshold, load_cohort, verify_pair

    if args.threshold is not None:
        threshold = Threshold(value=args.threshold, source="--threshold")
    else:
        threshold = find_threshold(args.model, args.trials)
    cohort = load_cohort(args.model, threshold)
    warnings = _verify_input_warnings(args.enroll, args.test)
    device = resolve_device(args.device)
    model = _load(args, device)
    result = verify_pair(
        model, args.enroll, args.test, threshold, device=device, cohort=cohort, max_seconds=_max_seconds(args, model)
    )
    if args.json:
        print(json.dumps({**result.as_dict(), "warnings": warnings}))
        return 0
    t = threshold
    kind = "AS-norm cosine" if t.score_norm == "asnorm" else "cosine"
    if t.trials is None:
        origin = "given with --threshold"
    else:
        eer = f", EER {100 * t.eer:.2f} %" if t.eer is not None else ""
        origin = f"EER threshold of trial list '{t.trials}'{eer}: {t.source}"
    print(f"score      {result.score:.6f} ({kind})")
    print(f"threshold  {t.value:.6f} ({origin})")
    print(f"decision   {'accept (same speaker)' if result.accept else 'reject (different speakers)'}")
    for warning in warnings:
        print(f"warning    {warning}")
    return 0


def _verify_input_warnings(*paths: str) -> list[str]:
    """``path: problem`` for each of ``paths`` (ssrl.audio.audio_problems); a silent file is refused
    (ValueError): it holds no voice, and its score would be meaningless."""
    from .audio import audio_problems

    warnings = []
    for path in paths:
        problems = audio_problems(path)
        silent = [p for p in problems if p.startswith("silent")]
        if silent:
            raise ValueError(f"{path}: {silent[0]}; there is no voice to compare (check the recording)")
        warnings += [f"{path}: {p}" for p in problems]
    return warnings


def _cmd_export(args: argparse.Namespace) -> int:
    from .inference import DEFAULT_OPSET, export_onnx
    from .models import read_model_file

    model = _load(args)
    system = read_model_file(args.model)["system"]
    report = export_onnx(model, args.onnx, opset=args.opset or DEFAULT_OPSET, system=system)
    shapes = ", ".join(f"({b}, {n})" for b, n in report.shapes)
    print(
        f"ssrl export: wrote {report.path} (opset {report.opset}); onnxruntime vs PyTorch: max abs "
        f"difference {report.max_abs_diff:.3g} on inputs {shapes}"
    )
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_runs

    print(compare_runs(args.run_a, args.run_b), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``ssrl`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Usage errors exit through argparse (status 2); input errors (any ValueError,
    e.g. a bad model file, audio file or manifest) and OS errors print
    ``ssrl COMMAND: error: ...`` on stderr and return 1.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError) as err:
        print(f"ssrl {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
