"""Every tuning constant of the kernels, with the mechanism behind it.

What each choice measured, and on which CPU, is in bench/README.md. Constants that a
kernel reads as a global are frozen into its compiled (and cached) code: an edit here
recompiles every kernel (see _jit.py). A value that must vary between calls or machines
is passed to the kernel as an argument instead, as `DOT_FILTERS` is.
"""

from llvmlite.binding import get_host_cpu_features
from numba.core import config

# Samples per partial sum of a convolution's weight gradient: fixed, so that
# the reduction order, and so every bit of the result, is the same for any thread count.
GRAD_CHUNK = 8
# Samples per forward task of the stride-1 convolution: its padding and accumulator
# buffers are allocated once per task and stay in cache.
FORWARD_CHUNK = 4
# Multiply-adds per chunk below which a convolution's chunk is not split between threads:
# waking a thread and padding the sample again would cost about what the split saves.
SPLIT_WORK = 50_000


def _vector_registers_are_wide() -> bool:
    """True where the code Numba generates may use AVX-512's 32 vector registers."""
    features = config.CPU_FEATURES
    if features is None and config.CPU_NAME is None:
        return bool(get_host_cpu_features().get("avx512f", False))
    return "+avx512f" in (features or "")


# Filters per pass of the convolution's weight-gradient tap loop, which keeps five
# accumulators per filter in vector registers: three (15 accumulators) fit in AVX-512's
# 32, but spill to the stack in AVX2's 16, where pairs are faster. LLVM may then split
# the sums differently, so the last bits can differ between the two kinds of CPU, as they
# already do between vector widths; on one machine they never depend on the thread
# count. (The forward and input-gradient loops keep three per pass on both.) Passed to
# the kernel as an argument, not read as a global, so tests can run every choice.
DOT_FILTERS = 3 if _vector_registers_are_wide() else 2

# Dense layer: rows per transpose task (a tile's writes share cache lines), and the
# batch size below which the products are memory-bound, so the kernels read the weight
# in place rather than pay for its transpose.
DENSE_TILE = 16
DENSE_SMALL_BATCH = 16

# Batch sizes that between them take every path of every kernel (the dense layer's take
# another from DENSE_SMALL_BATCH samples on): what warming up a model runs.
WARMUP_BATCHES = (2, DENSE_SMALL_BATCH)
# Optimiser updates: elements per parallel task.
OPTIM_CHUNK = 4096
# The notebook-compatible per-sample kernels: samples per pass over a dense weight, so
# that it is read once for all of them.
COMPAT_ROWS = 8
