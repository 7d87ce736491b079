"""Pure tensor estimators (no I/O, no Redis, no FastAPI): sites, ap, atp, hvp, ig, mhvp,
reliability, screen-flag-fix kernels."""
