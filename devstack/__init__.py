"""The local default stack: start, watch and stop the real services on one machine.

Used by the Makefile (``make up``/``down``/``demo``/``bench``) and by the test suite's fixtures.
"""
