"""The train stage's choices, in one place for `TrainConfig`'s checks and the CLI's `--help`
(importing this needs no torch)."""

MODES = ("feature-extract", "finetune")
MODALITIES = ("image", "audio")
BALANCE = ("none", "weights", "sampler")
BN_POLICIES = ("train", "frozen")
SELECT_METRICS = ("f1_macro", "accuracy", "precision_macro", "recall_macro")
IN_CHANNELS = (1, 3)  # audio: the spectrogram as one channel (the stem's RGB filters summed) or three
OOD_CHOICES = ("energy", "msp", "none")  # --ood-score (tldeploy.ood.OOD_SCORES, and none)
