"""Training one run: the method built from a resolved variant (``parts``), the loop around its update (``loop``).

Belongs here: building the method and its parts, epochs, checkpoints and resume, stop signals,
devices and seeds, sample grids, the contract probes. The update itself is the method's (a plugin).
``run.train_run`` is the entry point every executor calls.
"""
