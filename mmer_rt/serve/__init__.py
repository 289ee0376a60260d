"""The serving layer: the dynamic batcher (batcher.py), the HTTP app (http.py) and ``mmer-rt serve`` (command.py);
offline scoring, ``mmer-rt score`` (score.py), and Ray (ray.py: a Ray Data scoring job and a Ray Serve deployment).

Nothing in mmer_rt's core imports this package; its extras (fastapi, uvicorn, prometheus-client, python-multipart:
``pip install 'mmer-rt[serve]'``) are imported only where they are used, so ``import mmer_rt.serve.batcher`` needs
none of them. Ray (``pip install 'mmer-rt[ray]'``) is imported only by ray.py.
"""
