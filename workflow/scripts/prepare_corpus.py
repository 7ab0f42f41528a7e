"""Real-corpus preparation (VoxCeleb, generic corpora, MUSAN/RIR lists): see ssrl.prepare.

Subcommands, in pipeline order:

  scan        list the corpus, check free disk space, write the shard lists
  convert     convert/check the files of one shard (m4a -> 16 kHz FLAC)
  merge       join the shards -> data/train (VoxCeleb2) or data/train+test+trials (generic)
  voxceleb1   VoxCeleb1 trial lists -> data/test + data/trials
  augment     MUSAN + RIRS_NOISES -> data/augment/{noise,music,babble,rir}.lst

Hyper-parameters come as one JSON object (--hparams), as the Snakemake rules pass them.
"""

from __future__ import annotations

import argparse
import json
import sys

from ssrl.audio import AudioError
from ssrl.manifest import ManifestError
from ssrl.prepare import (
    PrepareError,
    convert_shard,
    prepare_generic_sets,
    prepare_voxceleb1_test,
    prepare_voxceleb_train,
    scan_corpus,
    write_augment_lists,
)


def _scan(args: argparse.Namespace, hp: dict) -> None:
    summary = scan_corpus(
        hp["kind"],
        hp["root"],
        hp.get("flac_dir"),
        args.shards,
        args.summary,
        size_ratio=hp["size_ratio"],
        margin_bytes=int(hp["disk_margin_gb"] * 1e9),
    )
    print(
        f"scan: {summary['files']} files, {summary['speakers']} speakers, {summary['pending_conversion']} to "
        f"convert (~{summary['estimated_flac_bytes'] / 1e9:.1f} GB), {summary['shards']} shards",
        file=sys.stderr,
    )


def _convert(args: argparse.Namespace, hp: dict) -> None:
    s = convert_shard(args.shard, args.records, args.summary, hp["max_failures"])
    print(
        f"shard {s['shard']}: {s['usable']}/{s['files']} usable ({s['converted']} converted, {s['skipped']} "
        f"already converted, {s['direct']} used directly), {s['failed']} failed, {s['hours']:.2f} h",
        file=sys.stderr,
    )
    _print_problems(s)


def _print_problems(summary: dict, shown: int = 20) -> None:
    """The failed and the suspicious files (silent, near-silent, shorter than their header says)."""
    for key, field in (("failures", "reason"), ("warnings", "warning")):
        items = summary.get(key, [])
        for item in items[:shown]:
            print(f"  {key[:-1]}: {item['path']}: {item[field]}", file=sys.stderr)
        if len(items) > shown:
            print(f"  ... and {len(items) - shown} more {key}", file=sys.stderr)


def _merge(args: argparse.Namespace, hp: dict) -> None:
    if hp["kind"] == "voxceleb2":
        s = prepare_voxceleb_train(
            args.records, args.summaries, args.wav_scp, args.utt2spk, args.summary, hp["max_failures"]
        )
    else:
        s = prepare_generic_sets(
            args.records,
            args.summaries,
            hp["max_failures"],
            args.out_dir,
            args.summary,
            trial_lists=hp.get("trials"),
            split=hp.get("split"),
            holdout=hp["holdout"],
            train_set=hp.get("train"),
            test_set=hp.get("test"),
            roots=hp["roots"],
        )
    print(
        f"merge: {s['usable']}/{s['files']} files usable, {s['hours']:.2f} h, {s['failed']} failed "
        f"(excluded from wav.scp), {s['warned']} warnings (kept; both listed in {args.summary})",
        file=sys.stderr,
    )
    _print_problems(s)


def _voxceleb1(args: argparse.Namespace, hp: dict) -> None:
    names = list(hp["trials"])
    if len(args.trials) != len(names):
        raise SystemExit(f"--trials gives {len(args.trials)} outputs for {len(names)} lists {names}")
    s = prepare_voxceleb1_test(hp["root"], hp["trials"], args.wav_scp, args.utt2spk, dict(zip(names, args.trials)))
    print(f"voxceleb1: {s['utterances']} test utterances; trials {json.dumps(s['trials'])}", file=sys.stderr)


def _augment(args: argparse.Namespace, hp: dict) -> None:
    counts = write_augment_lists(
        hp["sources"], {"noise": args.noise, "music": args.music, "babble": args.babble, "rir": args.rir}
    )
    print(f"augment: {counts}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", help="list the corpus, check disk space, write shard lists")
    p.add_argument(
        "--hparams",
        required=True,
        help='JSON: {"kind": "voxceleb2"|"generic", "root", "flac_dir", "size_ratio", "disk_margin_gb"}',
    )
    p.add_argument("--shards", nargs="+", required=True, help="one output list per shard")
    p.add_argument("--summary", required=True, help="scan summary JSON")
    p.set_defaults(func=_scan)

    p = sub.add_parser("convert", help="convert/check one shard")
    p.add_argument("--hparams", required=True, help='JSON: {"max_failures"}')
    p.add_argument("--shard", required=True, help="shard list written by scan")
    p.add_argument("--records", required=True, help="output: usable files (utt speaker path seconds)")
    p.add_argument("--summary", required=True, help="output: shard summary JSON (counts, hours, failures)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("merge", help="join the shards into the data sets")
    p.add_argument(
        "--hparams",
        required=True,
        help='JSON: {"kind", "max_failures"} and for generic "roots", "holdout", "train", "test" and '
        'one of "trials" {name: path} or "split"',
    )
    p.add_argument("--records", nargs="+", required=True)
    p.add_argument("--summaries", nargs="+", required=True)
    p.add_argument("--summary", required=True, help="output: preparation summary JSON")
    p.add_argument("--wav-scp", help="voxceleb2: output train wav.scp")
    p.add_argument("--utt2spk", help="voxceleb2: output train utt2spk")
    p.add_argument("--out-dir", help="generic: the data/ folder (train/, test/, trials/ are written)")
    p.set_defaults(func=_merge)

    p = sub.add_parser("voxceleb1", help="VoxCeleb1 trial lists -> test set")
    p.add_argument("--hparams", required=True, help='JSON: {"root", "trials": {name: path}}')
    p.add_argument("--wav-scp", required=True)
    p.add_argument("--utt2spk", required=True)
    p.add_argument("--trials", nargs="+", required=True, help="outputs, in the order of hparams.trials")
    p.set_defaults(func=_voxceleb1)

    p = sub.add_parser("augment", help="augmentation file lists")
    p.add_argument(
        "--hparams",
        required=True,
        help='JSON: {"sources": {"musan", "rirs", and/or a folder or list per name} or null (no augmentation)}',
    )
    for name in ("noise", "music", "babble", "rir"):
        p.add_argument(f"--{name}", required=True, help=f"output {name}.lst")
    p.set_defaults(func=_augment)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args, json.loads(args.hparams))
    except (PrepareError, ManifestError, AudioError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
