"""The serving layer: the dynamic batcher (batcher.py), the HTTP app (http.py) and ``mmer-rt serve`` (command.py).

Nothing in mmer_rt's core imports this package; its extras (fastapi, uvicorn, prometheus-client, python-multipart:
``pip install 'mmer-rt[serve]'``) are imported only where they are used, so ``import mmer_rt.serve.batcher`` needs
none of them.
"""
