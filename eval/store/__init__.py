"""The resumable results store (``results.sqlite`` + ``images/``), its claims table and the workers' leases."""
