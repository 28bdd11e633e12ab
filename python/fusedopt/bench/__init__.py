"""fusedopt's benchmark: ``python -m fusedopt bench`` and ``benchmarks/``.

It answers, on the user's machine, how much faster fusedopt is than what
they have (NumPy as written and tuned, PyTorch's optimizers, a plain
compiled loop) and how close it is to what the hardware allows (a roof
kernel with each rule's exact memory streams).

Modules: ``rules`` (what is measured, one line per rule), ``workloads``
(sizes and models), ``implementations`` (fusedopt and each peer behind one
interface), ``baselines`` and ``cython_loop`` (the tuned NumPy variant and
the plain compiled loop), ``timing``, ``runner``, ``report`` (tables, JSON,
plot) and ``cli``.
"""
