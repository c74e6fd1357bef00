"""A local stand-in of the Dendro central service.

A separate service that tests and the demo start (`dendro-prefect stand-in serve`); nothing outside
this package imports it. It speaks the 0.2.x compute-resource protocol and, in `v06`, the 0.6 service API, to the
controller and to the real job-side SDK of each.
"""
