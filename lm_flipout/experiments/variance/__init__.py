"""Gradient variance against batch size for shared, flipout and independent weight noise
(Wen et al. 2018, Figure 1c).

    lm-flipout variance runs/ptb/best.pt --batch-sizes 1,2,4,...,4096

A trained model is frozen (eval mode: every dropout off) and multiplicative Gaussian noise
``W = W̄ ∘ (1 + σE)`` is put on the first layer's recurrent matrix only. One *draw* is a
mini-batch of random training windows plus one noise sample; its gradient of the mean
per-sequence loss w.r.t. W̄_h is taken, and the per-weight variance of that gradient over
the draws, averaged over each gate block (i, f, g, o), is the curve's value.

How a draw is computed (the paper's protocol for large batches): the N sequences are run
as sub-batches of at most 64 that share the draw's noise. ``shared`` uses one ΔW for the
whole draw; ``flipout`` one base ΔŴ for the whole draw and fresh sign vectors for every
sequence (so every sub-batch has independent signs); ``independent`` a ΔW per sequence
(run one sequence at a time, so only up to ``--max-independent`` sequences). The summed
gradients of the sub-batches accumulate into the gradient of the mean loss.

Batches are nested: the first N sequences of a draw of the largest size N_max are the
draw at batch size N, so one pass of N_max sequences gives every batch size (the values at
different N are then correlated, which does not bias any of them). Draw r uses the same data
windows for every estimator (common random numbers), so the curves differ by the noise only.

Confidence intervals: jackknife over the R draws, on the log scale.

Modules: `statistics` (nested means, per-weight variance and its interval, slopes),
`gradients` (the frozen model, the draw's noise, per-sub-batch gradients), `study` (every
estimator × draw into rows) and `outputs` (CSV, figure, W&B, printing); the command line is
`lm_flipout.cli.variance`.
"""
