"""Overlong responses (DAPO, Yu et al. 2025 §3.4): a response cut at ``max_new_tokens`` has
no final answer, so its outcome reward says "wrong" about reasoning that may have been right.
Two remedies, both tiny pure functions:

* soft overlong punishment (``overlong_penalty``): a length penalty, added to the reward,
  that ramps from 0 to −penalty over the last ``buffer_tokens`` before the limit, so the
  policy is told "too long" smoothly before it is truncated;
* overlong filtering (``truncation_mask`` / ``mask_truncated``): truncated responses leave
  the loss entirely, so their noisy reward teaches nothing.
"""

from __future__ import annotations

import torch


def overlong_penalty(
    lengths: torch.Tensor, *, max_new_tokens: int, buffer_tokens: int, penalty: float
) -> torch.Tensor:
    """DAPO's soft overlong punishment per response (float, ≤ 0).

    0 for ``length ≤ max − buffer``; ``−penalty·(length − (max − buffer))/buffer`` in
    ``(max − buffer, max]`` (so exactly −penalty at ``max``); −penalty beyond ``max``.
    """
    if not 0 < buffer_tokens <= max_new_tokens:
        raise ValueError(
            f"buffer_tokens must lie in (0, max_new_tokens={max_new_tokens}], got {buffer_tokens}"
        )
    if penalty < 0:
        raise ValueError(f"overlong penalty must be >= 0 (it is subtracted), got {penalty}")
    start = max_new_tokens - buffer_tokens
    excess = (lengths.float() - start).clamp(min=0.0, max=float(buffer_tokens))
    return -penalty * excess / buffer_tokens


def truncation_mask(finished: torch.Tensor) -> torch.Tensor:
    """``[B, 1]`` float: 1 for a response that ended by itself (EOS / stop), 0 for one cut at
    the length limit; broadcasts against a ``[B, T]`` response mask."""
    return finished.to(torch.float32).reshape(-1, 1)


def mask_truncated(mask: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
    """The response mask with truncated responses' tokens removed (DAPO overlong filtering)."""
    return mask * truncation_mask(finished).to(mask.dtype)
