"""The embedded demo corpus (docs/method.md §11), the data stage of ``corpus.kind: demo``
(rules/data.smk, workflow/scripts/make_demo.py).

* :mod:`.corpus`: :func:`generate_corpus` writes the audio and the manifests (and :func:`make_trials`);
* :mod:`.voice`: speakers, sessions and the signal helpers of the speech model;
* :mod:`.synth`: the synthesiser (utterances, noise, music, babble speech);
* :mod:`.baseline`: the MFCC-mean cosine baseline that measures the corpus' difficulty.
"""

from .baseline import MFCC_BASELINE, cosine_trial_scores, mfcc_baseline, mfcc_means
from .corpus import BASELINE_FILE, TRIALS_NAME, generate_corpus, make_trials
from .synth import synthesise_utterance
from .voice import SessionStyle, clean_session, coloured_noise, make_speaker, random_session, room_impulse_response

__all__ = [
    "BASELINE_FILE",
    "MFCC_BASELINE",
    "SessionStyle",
    "TRIALS_NAME",
    "clean_session",
    "coloured_noise",
    "cosine_trial_scores",
    "generate_corpus",
    "make_speaker",
    "make_trials",
    "mfcc_baseline",
    "mfcc_means",
    "random_session",
    "room_impulse_response",
    "synthesise_utterance",
]
