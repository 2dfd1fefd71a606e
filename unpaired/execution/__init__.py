"""Running a study's runs: choosing what is left to do, executors that train runs (in this process or
in worker processes), and the summary. The planner does not know which executor runs.
"""
