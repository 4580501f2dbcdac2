"""One module per pipeline verb, each with run() returning a typed result (mmretrieval.core.contracts). Stages import
the layers below them, never each other.
"""
