"""Training one run: the CycleGAN update (``cyclegan``), the loop around it (``loop``), and what they need.

Belongs here: building the networks from a resolved variant, the update, epochs, checkpoints
and resume, stop signals, devices and seeds, sample grids. ``run.train_run`` is the entry point
every executor calls.
"""
