"""What runs leave behind and how it is read: the run folder (the one owner of its files and their
formats), the study folder, MLflow tracking (a hook plugin) and the comparison of variants.
"""
