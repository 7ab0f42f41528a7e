"""Real-corpus preparation: raw corpora -> the manifests every later stage reads.

Writes the "Files between stages" of docs/internals.md (``data/train``,
``data/test``, ``data/trials/<list>.txt``, ``data/augment/*.lst``) for

* **VoxCeleb**: VoxCeleb2 dev (``<vox2>/dev/aac/idNNNNN/<video>/<seg>.m4a``) is
  the training set, converted once to 16 kHz mono FLAC; VoxCeleb1
  (``<vox1>/wav/idNNNNN/<video>/<seg>.wav``) provides the test utterances named
  by the official trial lists (used as they are, no conversion).
* **a generic corpus**: ``<root>/<speaker>/**/*.{wav,flac,m4a}`` (CN-Celeb,
  LibriSpeech, a user's own data). ``.m4a`` is converted like VoxCeleb2,
  WAV/FLAC are used directly; the test set comes from explicit trial lists or
  from held-out speakers with sampled trials.
* **augmentation sources**: MUSAN ``noise``/``music``/``speech`` and
  RIRS_NOISES ``simulated_rirs`` (any audio format ssrl.audio reads), or a
  folder or list file per source, or none.

Training-set preparation runs in three steps so that a cluster converts in
parallel and the shard count is known when the DAG is built:

1. :func:`scan_corpus` lists every file, assigns speakers to a fixed number of
   shards (sorted speakers, round robin), checks the free disk space for the
   FLACs still to be written and writes one list per shard;
2. :func:`convert_shard` converts (or, for WAV/FLAC, checks) the files of one
   shard, skipping FLACs that are already complete, and records failures
   (corrupt files) instead of stopping, up to ``max_failures``;
3. :func:`prepare_voxceleb_train` / :func:`prepare_generic_sets` merge the
   shards into ``wav.scp``/``utt2spk`` (failed files excluded) and a summary.

Utterance ids are the path below the corpus (or speaker) folder without the
extension, ``/`` replaced by ``-``: ``id10270/x6uYqmx31kE/00001.wav`` ->
``id10270-x6uYqmx31kE-00001`` (docs/method.md §2).

Bad input raises :class:`PrepareError` (a ``ValueError``) whose message starts
with the offending path.

Modules: :mod:`.records` (types, ids, errors), :mod:`.scan`, :mod:`.convert`, :mod:`.sets`,
:mod:`.augment_lists`.
"""

from .augment_lists import augment_sources, write_augment_lists
from .convert import convert_shard, prepare_voxceleb_train
from .records import PrepareError, Record, SourceFile, utt_id_from_relpath
from .scan import (
    assign_shards,
    check_disk_space,
    estimate_conversion_bytes,
    read_shard_list,
    scan_corpus,
    scan_generic,
    scan_voxceleb2,
    write_shard_list,
)
from .sets import prepare_generic_sets, prepare_voxceleb1_test, read_path_trials, sample_trials, split_speakers

__all__ = [
    "PrepareError",
    "Record",
    "SourceFile",
    "assign_shards",
    "augment_sources",
    "check_disk_space",
    "convert_shard",
    "estimate_conversion_bytes",
    "prepare_generic_sets",
    "prepare_voxceleb1_test",
    "prepare_voxceleb_train",
    "read_path_trials",
    "read_shard_list",
    "sample_trials",
    "scan_corpus",
    "scan_generic",
    "scan_voxceleb2",
    "split_speakers",
    "utt_id_from_relpath",
    "write_augment_lists",
    "write_shard_list",
]
