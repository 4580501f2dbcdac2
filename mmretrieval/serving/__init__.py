"""Query time: the retrieval client, query-time re-ranking, filters, model loading with one bounded cache, the MLflow
pyfunc model and the HTTP service (the ``http`` package).
"""
