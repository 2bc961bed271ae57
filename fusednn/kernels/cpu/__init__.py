"""Numba kernels for the CPU backend.

Every kernel is a plain ``@njit(cache=True, error_model="numpy")`` function
over contiguous arrays and scalars. Where threads pay off a kernel comes as a
serial and a parallel driver around one shared, inlined body (distinct
function objects, because Numba's on-disk cache keys by function, not by
flags). Importing this package imports Numba but compiles nothing; each
kernel compiles on its first call and is cached on disk.

.. warning::
   Numba's cache checks only the source file of the function it caches. After
   editing :mod:`.activations` or :mod:`.common`, delete the ``__pycache__``
   (or ``$NUMBA_CACHE_DIR``) entries of the kernels that inline them
   (:mod:`.dense`, :mod:`.optim`, ...), or they keep running the old code. The same holds
   for :mod:`.epoch`, whose cached epoch kernel links in the dense, loss and optimizer
   kernels: after editing any of those, delete its entries too.

Modules: :mod:`.common` (dtype-preserving constants, chunk bounds), :mod:`.activations`,
:mod:`.dense`, :mod:`.losses`, :mod:`.optim`, :mod:`.layers` (dropout's Philox masks, batch norm),
and :mod:`.epoch` (a whole training epoch in one call).
"""
