"""What a study's runs add up to: the study folder and its index, MLflow tracking (a hook plugin),
the study's results as a table, and the statistics that compare its variants.
"""
