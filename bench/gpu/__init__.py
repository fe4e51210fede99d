"""The GPU benchmark: a bundle made here (bundle.py) and a runner that needs only torch, numpy,
Pillow and this checkout's worker/face (run.py, stages.py)."""
