"""`madapt serve`: an OpenAI-compatible embeddings endpoint over an adaptor's :class:`Encoder`.

:mod:`.wire` parses and answers OpenAI's wire format (no web framework), :mod:`.batcher` merges
concurrent requests into model batches in worker threads, :mod:`.app` is the FastAPI
application and :mod:`.runner` binds the socket and runs uvicorn. FastAPI and uvicorn are the
``serve`` extra: nothing here is imported by the CLI until `madapt serve` runs.
"""
