"""The contract every layer shares: errors, settings and params, the data schema, the path layout, stage results, file
helpers and locks. Imports nothing of the project above it.
"""
