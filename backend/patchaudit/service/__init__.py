"""What the API and the workers share: the typed contract of what is stored (``contract``),
the job kinds (``kinds``) and the helpers both sides call. Nothing here imports the API or the
worker."""
