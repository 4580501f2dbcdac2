"""The service's routes on ``APIRouter``s: per dataset (``datasets``), the listing and metrics, health, the page.

Each handler is short: it takes the shared :class:`~mmretrieval.serving.http.state.Service` and the dataset's state
through dependencies and calls the module function that does the work (``search``, ``items``).
"""
