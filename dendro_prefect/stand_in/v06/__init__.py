"""The stand-in's second protocol: the Dendro 0.6 service API (magland/dendro, `dendro` 0.6.22), served beside
the 0.2 central's routes with a store of its own.

The calls a compute client and a running job's SDK make (`POST /api/<call>`), with the rules of the service's
TypeScript handlers (apiHelpers/requestHandlers.ts), its job files on the stand-in's blob store, its PubSub
hints on the stand-in's PubNub-compatible hub (channel `dendro-compute-clients`), the registration page of a
compute client, and admin routes for tests and the demo. Entry point: `routes.service_router`.
"""
