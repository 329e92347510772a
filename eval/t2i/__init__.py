"""The text-to-image evaluation (``eval t2i``, ``eval classify``, ``eval report``): conditions, the run,
prompt sets through its runner."""
