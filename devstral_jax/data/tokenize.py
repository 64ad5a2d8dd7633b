"""Token sequences -> next-token training windows. (Records -> tokens and loss masks: the model's tokenizer,
`devstral_jax.tokenizers.Tokenizer.encode_record`.)"""

from __future__ import annotations

import numpy as np


def training_windows(tokens: np.ndarray, loss_mask: np.ndarray, seq_len: int) -> list[dict[str, np.ndarray]]:
    """Shifted next-token examples of at most `seq_len` positions: inputs[t] predicts targets[t] = tokens[t+1].

    A sequence longer than `seq_len` + 1 is cut into consecutive windows (each re-reads the last token of
    the previous one as its first input), so no target is lost or repeated.
    """
    inputs, targets, mask = tokens[:-1], tokens[1:], loss_mask[1:]
    return [dict(inputs=inputs[s:s + seq_len], targets=targets[s:s + seq_len], loss_mask=mask[s:s + seq_len])
            for s in range(0, len(inputs), seq_len) if mask[s:s + seq_len].any()]
