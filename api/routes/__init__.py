"""The ``/v1`` routes, grouped by resource."""
