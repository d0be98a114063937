import os

os.environ.setdefault("ATC_IL_PROGRESS", "0")
os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
