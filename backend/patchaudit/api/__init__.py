"""The HTTP service: FastAPI app, routes, schemas, settings, ``patchaudit serve``."""
