"""The HTTP door: FastAPI routes for the native API (and the V2 router)."""
