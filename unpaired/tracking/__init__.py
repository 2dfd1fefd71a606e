"""Everything MLflow: the store and bounded access to it (``store``), the study's parent run (``parent``), the
listener that tracks a study's runs while they train (``tracker``, registered as a plugin), and a study's finished
runs read back for ``compare`` (``reading``). Nothing else in the framework imports ``mlflow``."""
