"""Plain helpers the tests share (no tests here, no fixtures: those are in the conftest.py files, built on these).

Test modules import from this package only, never from one another, so a test module can be moved, renamed or run
alone without taking another one's tests along.
"""
