"""Robot-time code: bundle loading, inference backends, System 2 planning, System 1 reaction.

Nothing under this package may import torch (a test enforces it).
"""
