"""The ``model_registry`` kind: ``local`` (numbered folders + SQLite) and ``mlflow``."""
