"""Run a kernel's tasks in parallel, calling the task function by address.

A parallel kernel here is a task function, ``task(*args, t)`` for t in range(count),
which does one slice of the work (a chunk of samples, a group of filters), and
``run_tasks(task, count, *args)``, whose prange loop runs them on Numba's threads.

Why by address: Numba links a called njit function's LLVM module into its caller and
optimises and emits it there again, and a prange loop's body goes through three more
libraries (the gufunc, its wrapper, the parallel wrapper). A task called directly was
optimised and turned into machine code five times, which was most of the cold
compile: the stride-1 convolution's backward kernel took 16.0 s (its task 6.3 s of it).
Called through a pointer, the task compiles once in its own library (and is cached on
its own), and the parallel loop that calls it is a small function of the argument
types (bench/README, *Tasks called by address*). The stride-1 convolution (`conv.flat`)
and the dense layer run this way; `conv.gemm` ran 5-10% slower so and does not.

The address is of the task compiled for exactly the types of ``args`` and an int64,
Numba's own calling convention, so an exception raised in a task (an IndexError under
``boundscheck``) propagates as from a direct call. Under NUMBA_DISABLE_JIT the tasks
are Python functions and run one after another.
"""

from __future__ import annotations

import numpy as np
from numba import prange, typeof, types
from numba._dispatcher import compute_fingerprint
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import jit

_addresses: dict[tuple, int] = {}


@intrinsic
def _call(typingctx, address, args, t):
    """task(*args, t) for the njit function at `address` (an integer)."""
    argtypes = [*args.types, t]

    def codegen(context, builder, signature, llargs):
        pointer, packed, number = llargs
        values = [builder.extract_value(packed, i) for i in range(len(args.types))]
        fnty = context.call_conv.get_function_type(types.void, argtypes)
        fn = builder.inttoptr(pointer, fnty.as_pointer())
        status, _ = context.call_conv.call_function(builder, fn, types.void, argtypes,
                                                    [*values, number])
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return types.void(address, args, t), codegen


@jit(parallel=True)
def _run(address, count, args):
    for t in prange(count):
        _call(address, args, np.int64(t))


def _address(task, args: tuple) -> int:
    """The address of task compiled (or loaded from the cache) for args and an int64."""
    try:  # Numba's own cheap key of a value's type
        key = (task, *map(compute_fingerprint, args))
    except ValueError:  # a type without a fingerprint: type it in full
        key = (task, *map(typeof, args))
    address = _addresses.get(key)
    if address is None:
        cres = task.get_compile_result(types.void(*map(typeof, args), types.int64))
        address = _addresses[key] = cres.library.get_pointer_to_function(
            cres.fndesc.llvm_func_name)
    return address


def run_tasks(task, count: int, *args) -> None:
    """task(*args, t) for every t in range(count), in parallel on Numba's threads."""
    if not hasattr(task, "get_compile_result"):  # NUMBA_DISABLE_JIT: plain Python
        for t in range(count):
            task(*args, t)
        return
    _run(_address(task, args), count, args)
