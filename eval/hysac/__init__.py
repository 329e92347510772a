"""HySAC (``eval hysac``): safe/unsafe classification by root distance and retrieval with / without traversal."""
