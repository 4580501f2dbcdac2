"""The doors to outside systems: Milvus (index), MLflow (tracking), DVC (versioning), Great Expectations (expectations,
data_docs) and the region store on disk. The only modules that import pymilvus, mlflow or dvc; they return folders,
configs and records, never models.
"""
