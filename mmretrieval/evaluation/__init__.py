"""Retrieval metrics, the evaluator (model + data in, metrics out) and the gates.
"""
