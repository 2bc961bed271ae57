"""Compile one specialisation of a Numba function on a background thread while the caller works on.

A cold compile of the epoch kernel (:mod:`fusednn.kernels.cpu.epoch`) takes seconds; the
per-step kernels that ``fit`` can train with meanwhile take far less. A
:class:`Specialisation` answers "can this be called now without compiling?" cheaply —
compiled in this process, or loadable from Numba's on-disk cache, which it then loads — and
otherwise compiles on a thread of its own, so that :func:`fusednn.nn.fit` can start on the
per-step path and switch when the kernel is ready.

Why a thread and not a process: Numba's type inference and lowering hold the GIL, but its
LLVM passes run in C through ctypes without it; measured on the 2-core development VM, the
per-step loop kept 67 % of its speed while the epoch kernel compiled beside it. Numba's
compiler lock is process-wide, so the background compile must start only after the per-step
kernels have compiled (their first step), or they would wait for it.

The thread is not a daemon: a script that ends before the compile does waits for it at exit,
so that the kernel is in the disk cache for the next run (as a daemon, every short run would
compile it again and never use it).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from numba.core.compiler_lock import global_compiler_lock

_lock = threading.Lock()
_threads: dict[tuple[Any, tuple[Any, ...]], threading.Thread] = {}
"""The compile thread of each (dispatcher, signature), so two callers never compile the same thing twice.

Keyed by the dispatcher itself, not its ``id``: an id can be reused once a dispatcher is gone."""
_errors: dict[tuple[Any, tuple[Any, ...]], BaseException] = {}


class Specialisation:
    """One signature of one Numba dispatcher: whether it is compiled, and compiling it now or in the background.

    >>> import numba
    >>> import numpy as np
    >>> from fusednn.backends.background_compile import Specialisation
    >>> @numba.njit
    ... def double(a):
    ...     return 2 * a
    >>> spec = Specialisation(double, (np.zeros(3),))
    >>> spec.ready()
    False
    >>> spec.compile(wait=True)
    >>> spec.ready()
    True
    """

    def __init__(self, dispatcher: Any, example_args: Sequence[Any]) -> None:
        """``example_args``: arguments whose Numba types are those of the calls to come."""
        self.dispatcher = dispatcher
        self.signature = tuple(dispatcher.typeof_pyval(arg) for arg in example_args)
        self._key = (dispatcher, self.signature)

    def ready(self) -> bool:
        """Whether a call with this signature runs without compiling: compiled here, or now loaded from disk.

        Raises the compile's own error if a background compile of it failed.
        """
        if self.signature in self.dispatcher.overloads:
            return True
        error = _errors.get(self._key)
        if error is not None:
            raise error
        thread = _threads.get(self._key)
        if thread is not None and thread.is_alive():
            return False  # its compile holds the compiler lock: a cache lookup would wait for it
        return self._load_from_disk_cache()

    def compile(self, wait: bool) -> None:
        """Compile (or load) it now (``wait``), or start that on a background thread and return at once."""
        if wait:
            thread = _threads.get(self._key)
            if thread is not None:
                thread.join()
            if not self.ready():
                self.dispatcher.compile(self.signature)
            return
        with _lock:
            if self._key in _threads or self.signature in self.dispatcher.overloads:
                return
            thread = threading.Thread(
                target=self._compile_in_background, name=f"fusednn-compile-{self.dispatcher.__name__}"
            )
            _threads[self._key] = thread
        thread.start()

    def _compile_in_background(self) -> None:
        try:
            self.dispatcher.compile(self.signature)
        except BaseException as error:  # reported to the next ready() in the caller's thread
            _errors[self._key] = error

    def _load_from_disk_cache(self) -> bool:
        """Load the specialisation from Numba's cache if it is there, as ``Dispatcher.compile`` would first.

        Uses the dispatcher's private cache object: on a Numba without it this answers False, and the
        specialisation is compiled (which still finds the cache) on the background thread instead.
        """
        dispatcher = self.dispatcher
        try:
            with global_compiler_lock:
                if self.signature in dispatcher.overloads:
                    return True
                compiled = dispatcher._cache.load_overload(self.signature, dispatcher.targetctx)
                if compiled is None:
                    return False
                dispatcher.targetctx.insert_user_function(compiled.entry_point, compiled.fndesc, [compiled.library])
                dispatcher.add_overload(compiled)
                return True
        except AttributeError:
            return False
