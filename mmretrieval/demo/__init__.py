"""The bundled demo sample (photos from installed wheels, moving-digit clips).
"""
