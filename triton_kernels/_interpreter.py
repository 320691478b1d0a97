"""Where the Triton kernels run, checked at every launch, and the interpreter serialised.

Triton decides when a kernel is defined (``@triton.jit``, at the import of the kernel module) whether
it is compiled for a GPU or interpreted on the CPU (``TRITON_INTERPRET=1``). Setting the variable
after that import used to fail deep inside Triton (``0 active drivers``, or an InterpreterError);
:func:`guarded` names the cause instead. The interpreter keeps per-launch state in module globals,
so launches from several threads corrupted each other (InterpreterError "Did you forget to add
@triton.jit ?"); under it, every launcher holds one process-wide lock. Compiled GPU launches never
take it.
"""

from __future__ import annotations

import functools
import threading

from ..registry import env_get

_LOCK = threading.RLock()  # re-entrant: a launcher may call another


def interpreting() -> bool:
    return env_get("TRITON_INTERPRET") == "1"  # read on every launcher call: the registry's cheap read


def _is_interpreted(kernel) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def _mismatch(wanted: bool) -> RuntimeError:
    when = "set" if wanted else "unset"
    made = "compiled for a GPU" if wanted else "made for the interpreter"
    return RuntimeError(
        f"TRITON_INTERPRET is {when} now, but monarchrt_ops's Triton kernels were {made} when they "
        "were imported (Triton reads TRITON_INTERPRET once, at @triton.jit): set or unset it before "
        "the first Triton call, in the environment or at the top of the script"
    )


def guarded(*kernels):
    """Decorate a launcher of ``kernels``: a RuntimeError when TRITON_INTERPRET now disagrees with how
    they were defined, then the interpreter lock when interpreting."""
    kinds = frozenset(_is_interpreted(kernel) for kernel in kernels)  # fixed when they were defined

    def wrap(launcher):
        @functools.wraps(launcher)
        def run(*args, **kwargs):
            wanted = interpreting()
            if kinds != {wanted}:  # a RuntimeError when TRITON_INTERPRET now says otherwise
                raise _mismatch(wanted)
            if not wanted:
                return launcher(*args, **kwargs)
            with _LOCK:
                return launcher(*args, **kwargs)

        return run

    return wrap
