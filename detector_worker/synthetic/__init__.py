"""A synthetic camera world for tests, demos and training the stand-in models.

Never imported by a running worker: it exists so that everything can be built and tested
offline, with footage whose ground truth is known exactly.
"""
